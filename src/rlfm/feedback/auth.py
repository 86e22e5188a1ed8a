"""People, invites, passwords, sessions, login rate limiting.

- **No default password, no sign-up.** An account starts as an invite: ``rlfm label admin
  create`` (an admin) or ``rlfm label invite`` / the admin page (a researcher or labeler of a
  project) creates the user without a password and prints a one-time link
  ``<url>/invite/<token>``, valid for :data:`INVITE_DAYS` days, where the person sets one.
- **Secrets are stored hashed**: passwords with Argon2id (``argon2-cffi``'s defaults, RFC 9106
  low-memory profile); invite and session tokens (32 random bytes) as SHA-256, so a copy of the
  database opens no account.
- **Sessions** live in the database (logging out ends them at once) for :data:`SESSION_HOURS`
  hours; each carries its own CSRF token, which every state-changing request must echo.
- **Login rate limiting**: :data:`MAX_FAILURES_PER_EMAIL` failed logins for one email, or
  :data:`MAX_FAILURES_PER_IP` from one address, within :data:`WINDOW_MINUTES` minutes, and
  further attempts are refused (HTTP 429) until the window has passed. A wrong email costs
  the same Argon2 check as a wrong password (no account enumeration by timing).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from rlfm.feedback.db import (
    Invite,
    LabelError,
    LoginAttempt,
    LoginSession,
    Membership,
    Project,
    User,
    utcnow,
)

INVITE_DAYS = 7
SESSION_HOURS = 12
WINDOW_MINUTES = 15
MAX_FAILURES_PER_EMAIL = 5
MAX_FAILURES_PER_IP = 20
MIN_PASSWORD_LENGTH = 10
ROLES = ("researcher", "labeler")

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("rlfm: a password nobody has")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def new_token() -> str:
    """A random URL-safe token (32 bytes)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """How a token is stored: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_secret(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def normalise_email(email: str) -> str:
    """An email address trimmed and lower-cased; LabelError unless it looks like one."""
    e = email.strip().lower()
    if not _EMAIL.match(e) or len(e) > 320:
        raise LabelError(f"email {email!r}: not an email address", 422)
    return e


def check_password(password: str, email: str) -> None:
    """LabelError (422) saying why, unless ``password`` is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise LabelError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters", 422)
    if len(password) > 1024:
        raise LabelError("the password must have at most 1024 characters", 422)
    if password.strip().lower() == email.strip().lower():
        raise LabelError("the password must not be the email address", 422)


# ---------------------------------------------------------------------------- invites


@dataclass(frozen=True)
class InviteLink:
    """A new invite: who, the one-time token, and the path that uses it."""

    email: str
    token: str
    new_user: bool

    @property
    def path(self) -> str:
        return f"/invite/{self.token}"


def invite(
    session: Session,
    email: str,
    *,
    admin: bool = False,
    project: Project | None = None,
    role: str | None = None,
) -> InviteLink | None:
    """Invite ``email`` as an admin, or as ``role`` of ``project``.

    A new person (or one who never set a password) gets a one-time invite link; earlier unused
    links of theirs stop working. A person who already has a password is only given the new
    role or membership, and None is returned (they log in as before).
    """
    email = normalise_email(email)
    if project is not None and role not in ROLES:
        raise LabelError(f"--role {role!r}: must be one of {', '.join(ROLES)}", 422)
    user = session.scalar(select(User).where(User.email == email))
    new_user = user is None
    if user is None:
        user = User(email=email, is_admin=admin)
        session.add(user)
        session.flush()
    elif admin:
        user.is_admin = True
    if project is not None:
        member = session.scalar(
            select(Membership).where(
                Membership.project_id == project.id, Membership.user_id == user.id
            )
        )
        if member is None:
            session.add(Membership(project_id=project.id, user_id=user.id, role=role))
        else:
            member.role = role  # type: ignore[assignment]
    if user.password_hash is not None:
        return None
    session.execute(delete(Invite).where(Invite.user_id == user.id, Invite.used_at.is_(None)))
    token = new_token()
    session.add(
        Invite(
            token_hash=token_hash(token),
            user_id=user.id,
            expires_at=utcnow() + timedelta(days=INVITE_DAYS),
        )
    )
    return InviteLink(email, token, new_user)


def invite_user(session: Session, token: str) -> tuple[Invite, User]:
    """The unused, unexpired invite of ``token`` and its user; LabelError (404) otherwise."""
    inv = session.scalar(select(Invite).where(Invite.token_hash == token_hash(token)))
    if inv is None or inv.used_at is not None or inv.expires_at < utcnow():
        raise LabelError(
            "this invite link is not valid: it was used already, has expired or never existed; "
            "ask an admin for a new one",
            404,
        )
    user = session.get(User, inv.user_id)
    assert user is not None
    return inv, user


def accept_invite(session: Session, token: str, password: str) -> User:
    """Set the password of the invite's user; the link is then used up."""
    inv, user = invite_user(session, token)
    check_password(password, user.email)
    user.password_hash = _hasher.hash(password)
    inv.used_at = utcnow()
    return user


# ---------------------------------------------------------------------------- logging in


def login(session: Session, email: str, password: str, ip: str) -> User | None:
    """The user with ``email`` and ``password``, or None when they are wrong; LabelError 429
    while the email or the address is rate limited. Every attempt is recorded: the caller
    commits the transaction, then answers a None with 401.
    """
    key = email.strip().lower()[:320]
    since = utcnow() - timedelta(minutes=WINDOW_MINUTES)
    by_email = session.scalar(
        select(func.count())
        .select_from(LoginAttempt)
        .where(LoginAttempt.email == key, LoginAttempt.ok.is_(False), LoginAttempt.at > since)
    )
    by_ip = session.scalar(
        select(func.count())
        .select_from(LoginAttempt)
        .where(LoginAttempt.ip == ip, LoginAttempt.ok.is_(False), LoginAttempt.at > since)
    )
    if (by_email or 0) >= MAX_FAILURES_PER_EMAIL or (by_ip or 0) >= MAX_FAILURES_PER_IP:
        raise LabelError(
            f"too many failed logins; try again in {WINDOW_MINUTES} minutes", status=429
        )
    user = session.scalar(select(User).where(User.email == key))
    ok = False
    try:
        ok = _hasher.verify(
            user.password_hash if user and user.password_hash else _DUMMY_HASH, password
        )
        ok = ok and user is not None and user.password_hash is not None
    except (VerificationError, InvalidHashError):
        ok = False
    session.add(LoginAttempt(email=key, ip=ip[:64], ok=ok))
    if not ok or user is None:
        return None
    if _hasher.check_needs_rehash(user.password_hash or ""):
        user.password_hash = _hasher.hash(password)
    return user


def start_session(session: Session, user: User) -> tuple[str, LoginSession]:
    """A new login session for ``user``: (cookie token, session row)."""
    token = new_token()
    row = LoginSession(
        token_hash=token_hash(token),
        user_id=user.id,
        csrf_token=new_token(),
        expires_at=utcnow() + timedelta(hours=SESSION_HOURS),
    )
    session.add(row)
    session.execute(delete(LoginSession).where(LoginSession.expires_at < utcnow()))
    return token, row


def session_user(session: Session, token: str | None) -> tuple[User, LoginSession] | None:
    """The user and session of a cookie token, or None (unknown or expired)."""
    if not token:
        return None
    row = session.scalar(select(LoginSession).where(LoginSession.token_hash == token_hash(token)))
    if row is None or row.expires_at < utcnow():
        return None
    user = session.get(User, row.user_id)
    return (user, row) if user is not None else None


def end_session(session: Session, token: str | None) -> None:
    """Log out: the session of ``token`` is deleted."""
    if token:
        session.execute(delete(LoginSession).where(LoginSession.token_hash == token_hash(token)))
