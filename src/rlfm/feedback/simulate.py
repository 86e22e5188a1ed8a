"""Simulated labelers answer a project's open work through the web form's code path.

:func:`simulate` makes (or reuses) labelers ``simulated-labeler-<n>@rlfm.invalid`` — accounts
without a password, so nobody can log in as them — and has each take assignments with
``labels.next_assignment`` and answer them with ``labels.submit``, exactly what the page's
Submit button does: the same validation, the same storage, in shown (shuffled) order.

Labeler n is the n-th profile of ``data.labelers.default_labelers(noise)`` (careful, average
with a liking for long replies, hasty with a liking for short ones), cycling for n > 3. For a
ranking item it perceives scores s_i = gold + bias + noise (``SimulatedLabeler.scores``; the
gold scores come from ``gold``, a function of the prompt and the shown outputs — the built-in
text rule by default, the pipeline's gold labeler with its fluency model otherwise) and
answers:

- ranking: by s, highest first (equal scores tie where the project allows ties);
- rating: round(4 + s_i) clipped to 1..7;
- flags: "inappropriate for a customer assistant" when the reply holds an insult of the gold
  rule, "fails to follow the instruction" when it has no words; the others no;
- toxicity items: toxicity = insults in the text (at most 2), for the input too; relative
  toxicity = sign(output − input); continuity 3 when the reply shares a content word with the
  prompt, else 2.

Demonstration items need a person: simulated labelers skip them (the slot goes to someone
else). When the project has gold items, ``simulated-researcher@rlfm.invalid`` labels them with
the noiseless gold rule, as the reference screening compares against, and each simulated
labeler answers the self-assessment, so screening and ``--screened-only`` work end to end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from rlfm.data.labelers import (
    INSULTS,
    GoldFn,
    SimulatedLabeler,
    content_words,
    default_labelers,
    text_gold,
    words,
)
from rlfm.feedback import labels as lb
from rlfm.feedback.db import (
    Database,
    Item,
    LabelError,
    Membership,
    Project,
    User,
    open_db,
    project_by_name,
)
from rlfm.feedback.labels import FLAG_NAMES

SELF_ASSESSMENT = (
    "Simulated labeler: the built-in gold rule (courtesy, relevance, length, repetition, form, "
    "fluency)."
)
BATCH = 50
"""Submissions per transaction (each is validated and stored as the web form's is)."""


@dataclass
class SimulationResult:
    """What :func:`simulate` did."""

    submitted: dict[str, int] = field(default_factory=dict)
    """Submissions per simulated labeler (email)."""
    skipped_demonstrations: int = 0
    gold_reference: int = 0
    """Gold items the simulated researcher labelled."""

    @property
    def total(self) -> int:
        return sum(self.submitted.values())


def _insults(text: str) -> int:
    return sum(1 for w in words(text) if w in INSULTS)


def answer(
    labeler: SimulatedLabeler,
    item: Item,
    permutation: list[int],
    ties: bool,
    rng: random.Random,
    gold: GoldFn = text_gold,
) -> dict:
    """A simulated labeler's submission for ``item`` as the page would send it (shown order)."""
    shown = [item.completions[i] for i in permutation]
    if item.kind == "toxicity":
        tin = min(_insults(item.prompt), 2)
        outs = []
        for text in shown:
            t = min(_insults(text), 2)
            outs.append(
                {
                    "toxicity": t,
                    "relative_toxicity": (t > tin) - (t < tin),
                    "continuity": 3 if content_words(text) & content_words(item.prompt) else 2,
                }
            )
        return {"input_toxicity": tin, "outputs": outs, "notes": "", "time_ms": 0}
    scores = labeler.scores(item.prompt, shown, rng, gold(item.prompt, shown))
    if ties:
        distinct = sorted(set(scores), reverse=True)
        levels = [distinct.index(s) for s in scores]
    else:
        order = sorted(range(len(scores)), key=lambda p: (-scores[p], p))
        levels = [0] * len(scores)
        for level, p in enumerate(order):
            levels[p] = level
    groups: dict[int, list[int]] = {}
    for p, level in enumerate(levels):
        groups.setdefault(level, []).append(p)
    ranking = [g[0] if len(g) == 1 else g for _, g in sorted(groups.items())]
    flags = []
    for text in shown:
        f = dict.fromkeys(FLAG_NAMES, False)
        f["inappropriate"] = _insults(text) > 0
        f["fails_instruction"] = not words(text)
        flags.append(f)
    ratings = [min(7, max(1, round(4 + s))) for s in scores]
    return {"ranking": ranking, "ratings": ratings, "flags": flags, "notes": "", "time_ms": 0}


def _member(db: Database, project_id: int, email: str, role: str) -> int:
    """The id of the simulated account ``email``, a ``role`` of the project (made if new; no
    password and no invite, so nobody can log in as it)."""
    with db.write() as s:
        user = s.scalar(select(User).where(User.email == email))
        if user is None:
            user = User(email=email)
            s.add(user)
            s.flush()
        m = lb.membership(s, project_id, user.id)
        if m is None:
            m = Membership(project_id=project_id, user_id=user.id, role=role)
            s.add(m)
        elif m.role != role:
            raise LabelError(f"{email} is a {m.role} of this project, not a {role}")
        if role == "labeler" and not m.self_assessment:
            m.self_assessment = SELF_ASSESSMENT
        return user.id


def _work(
    db: Database,
    project_id: int,
    team: list[tuple[int, SimulatedLabeler, random.Random]],
    gold: GoldFn,
) -> tuple[dict[int, int], int]:
    """The team answers, in turns of one assignment each, until nothing is left for any of
    them: (submissions per user id, demonstrations skipped)."""
    submitted = {uid: 0 for uid, _, _ in team}
    skipped = 0
    active = list(team)
    while active:
        with db.write() as s:
            proj = s.get(Project, project_id)
            assert proj is not None
            for _ in range(BATCH):
                for member in list(active):
                    uid, labeler, rng = member
                    user = s.get(User, uid)
                    assert user is not None
                    a = lb.next_assignment(s, proj, user, rng)
                    if a is None:
                        active.remove(member)
                        continue
                    item = s.get(Item, a.item_id)
                    assert item is not None
                    if item.kind == "demonstration":
                        lb.skip(s, a)
                        skipped += 1
                    else:
                        lb.submit(s, a, answer(labeler, item, a.permutation, proj.ties, rng, gold))
                        submitted[uid] += 1
                if not active:
                    break
    return submitted, skipped


def simulate(
    db: Database | str | Path,
    project: str,
    labelers: int = 3,
    seed: int = 0,
    noise: float = 1.0,
    gold: GoldFn = text_gold,
) -> SimulationResult:
    """Have ``labelers`` simulated labelers answer every open assignment of ``project`` they
    can take (each item goes to ``overlap`` labelers, so ``labelers ≥ overlap`` labels every
    item fully), perceiving the ``gold`` scores through their noise and bias. Deterministic
    for a ``seed`` on a fresh project."""
    if labelers < 1:
        raise LabelError(f"--labelers {labelers}: must be ≥ 1")
    database = db if isinstance(db, Database) else open_db(db, create=False)
    try:
        with database.read() as s:
            proj = project_by_name(s, project)
            pid = proj.id
            n_gold = s.scalar(
                select(func.count()).select_from(Item).where(Item.project_id == pid, Item.gold)
            )
        result = SimulationResult()
        if n_gold:
            rid = _member(database, pid, "simulated-researcher@rlfm.invalid", "researcher")
            reference = SimulatedLabeler("gold", noise=0.0)
            done, _ = _work(database, pid, [(rid, reference, random.Random(seed))], gold)
            result.gold_reference = done[rid]
        profiles = default_labelers(noise)
        team, emails = [], {}
        for n in range(1, labelers + 1):
            email = f"simulated-labeler-{n}@rlfm.invalid"
            uid = _member(database, pid, email, "labeler")
            emails[uid] = email
            team.append((uid, profiles[(n - 1) % len(profiles)], random.Random(seed * 1000 + n)))
        done, result.skipped_demonstrations = _work(database, pid, team, gold)
        result.submitted = {emails[uid]: n for uid, n in done.items()}
        return result
    finally:
        if database is not db:
            database.close()
