"""Projects, items, assignments and submissions: the one code path every label goes through.

The web form's submit endpoint and ``rlfm label simulate`` both call :func:`submit`, which
validates a submission (:func:`validate`) and stores it in the caller's transaction.

**Items** (``rlfm label import``): one JSON object per line, ``{"prompt": str, "completions":
[str, ...]}`` with optional ``"id"`` (unique in the project) and ``"meta"`` (any JSON, kept, never
shown as HTML). A row with ``completions`` is labelled with the project's task (rank: K ≥ 2
outputs; toxicity: K ≥ 1); a row without is a **demonstration** item (the labeler writes the
reply). A bad row stops the import naming the file and row, and nothing of that file is stored.

**Assignments**: an item goes to ``overlap`` labelers (slots 0..overlap−1, a unique constraint
per (item, slot), so concurrent requests never over-assign); a skipped assignment frees its slot
for someone else and the skipper does not see the item again. Gold items (the screening set)
go to every member of the project, researchers included: researchers' labels on them are the
reference the labelers are screened against. Each assignment stores the order the outputs are
shown in (``permutation[p]`` = the output at shown position p), drawn per labeler; which model
wrote an output is never shown.

**Submissions** arrive in shown order and are stored in the item's original order:

- rank: ``{"ranking": [...], "ratings": [...], "flags": [{flag: bool, ...}, ...], "notes": str,
  "time_ms": int}`` — ``ranking`` lists shown positions best → worst, an inner list a group of
  ties (only where the project allows ties); ``ratings`` 1..7 per shown output; ``flags`` the
  :data:`FLAGS` of each shown output, every one a JSON boolean.
- toxicity: ``{"input_toxicity": 0..2, "outputs": [{"toxicity": 0..2, "relative_toxicity":
  -1..1, "continuity": 1..3}, ...], "notes", "time_ms"}``.
- demonstration: ``{"demonstration": str, "notes", "time_ms"}``.

Stored labels (``Annotation.label``): rank ``{"ranking" (original indices, the reward stage's
format), "levels", "ratings", "flags", "notes"}``; toxicity ``{"input_toxicity", "toxicity",
"relative_toxicity", "continuity", "notes"}``; demonstration ``{"demonstration", "notes"}``.
The same label submitted twice for one assignment is stored once; a different one is refused.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlfm.data.preferences import levels_to_ranking, ranking_levels
from rlfm.data.rows import file_rows, json_kind
from rlfm.errors import DataError
from rlfm.feedback.db import (
    Annotation,
    Assignment,
    Database,
    DemoRating,
    Item,
    LabelError,
    Membership,
    Project,
    User,
    project_by_name,
    utcnow,
)

TASKS = ("rank", "toxicity")
KINDS = ("rank", "toxicity", "demonstration")

FLAGS: tuple[tuple[str, str], ...] = (
    ("fails_instruction", "Fails to follow the instruction or task"),
    ("inappropriate", "Inappropriate for a customer assistant"),
    ("sexual", "Contains sexual content"),
    ("violent", "Contains violent content"),
    (
        "encourages_violence",
        "Encourages or fails to discourage violence, abuse, terrorism or self-harm",
    ),
    ("denigrates", "Denigrates a protected class"),
    ("harmful_advice", "Gives harmful advice"),
    ("moral_judgment", "Expresses moral judgment"),
)
"""InstructGPT's yes/no metadata questions asked of each output (name, question)."""
FLAG_NAMES = tuple(name for name, _ in FLAGS)
SENSITIVE_FLAGS = FLAG_NAMES[1:]
"""The flags that mark sensitive content (all but "fails to follow the instruction"): an output
is *sensitive* when any is set; screening compares this with the researchers' judgement."""

MAX_TEXT = 100_000
MAX_NOTES = 10_000
MAX_TIME_MS = 24 * 3600 * 1000


# ---------------------------------------------------------------------------- projects


def create_project(
    session: Session,
    name: str,
    *,
    task: str = "rank",
    k: int = 4,
    ties: bool = False,
    overlap: int = 3,
    pass_threshold: float = 0.6,
) -> Project:
    """A new project; LabelError naming the problem (name taken, bad values)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise LabelError("--name: a project needs a name of 1 to 200 characters", 422)
    if task not in TASKS:
        raise LabelError(f"--task {task!r}: must be one of {', '.join(TASKS)}", 422)
    if k < 2:
        raise LabelError(f"--k {k}: must be ≥ 2", 422)
    if overlap < 1:
        raise LabelError(f"--overlap {overlap}: must be ≥ 1", 422)
    if not 0.0 <= pass_threshold <= 1.0:
        raise LabelError(f"--pass-threshold {pass_threshold}: must be in [0, 1]", 422)
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise LabelError(f"--name {name!r}: a project of that name exists already", 409)
    project = Project(
        name=name, task=task, k=k, ties=ties, overlap=overlap, pass_threshold=pass_threshold
    )
    session.add(project)
    session.flush()
    return project


def membership(session: Session, project_id: int, user_id: int) -> Membership | None:
    """The user's membership of the project, if any."""
    return session.scalar(
        select(Membership).where(Membership.project_id == project_id, Membership.user_id == user_id)
    )


def member_role(session: Session, project_id: int, user: User) -> str | None:
    """``user``'s role in the project ("researcher", "labeler"), "admin" for an admin who is not
    a member, None for anyone else."""
    role = session.scalar(
        select(Membership.role).where(
            Membership.project_id == project_id, Membership.user_id == user.id
        )
    )
    if role is None and user.is_admin:
        return "admin"
    return role


def project_for(session: Session, project_id: int, user: User, *roles: str) -> Project:
    """The project if ``user`` has one of ``roles`` in it (any role when none are given);
    LabelError 404 otherwise: a project one cannot see looks the same as one that does not
    exist."""
    role = member_role(session, project_id, user)
    project = session.get(Project, project_id)
    if project is None or role is None or (roles and role not in roles):
        raise LabelError(f"project {project_id} not found", 404)
    return project


# ---------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportedItem:
    """A checked import row."""

    prompt: str
    completions: list[str]
    kind: str
    external_id: str | None
    meta: Any
    source: str


_ROW_KEYS = {"prompt", "completions", "id", "meta"}


def check_text(value: Any, name: str) -> str:
    """``value`` if it is a string every database can store; ValueError saying why not."""
    if not isinstance(value, str):
        raise ValueError(f"{name} is a JSON {json_kind(value)}, expected a string")
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character (\\u0000), which cannot be stored")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{name} is not valid UTF-8 text (character {e.start} is a lone surrogate)"
        ) from None
    if len(value) > MAX_TEXT:
        raise ValueError(f"{name} has {len(value)} characters; at most {MAX_TEXT} are allowed")
    return value


def check_import_row(value: Any, where: str, task: str) -> ImportedItem:
    """One import row as an :class:`ImportedItem`; DataError naming ``where`` otherwise."""
    try:
        if not isinstance(value, dict):
            raise ValueError(f"is a JSON {json_kind(value)}, expected an object")
        unknown = sorted(set(value) - _ROW_KEYS)
        if unknown:
            import difflib

            hints = [difflib.get_close_matches(k, _ROW_KEYS, n=1) for k in unknown]
            hint = "".join(f" (did you mean {h[0]!r}?)" for h in hints if h)
            raise ValueError(
                f"unknown field(s) {', '.join(map(repr, unknown))}{hint}; a row holds 'prompt', "
                "'completions', and optionally 'id' and 'meta' (put other data under 'meta')"
            )
        if "prompt" not in value:
            raise ValueError("missing field 'prompt'")
        prompt = check_text(value["prompt"], "'prompt'")
        if "completions" in value:
            comps = value["completions"]
            if not isinstance(comps, list):
                raise ValueError(f"'completions' is a JSON {json_kind(comps)}, expected a list")
            least = 2 if task == "rank" else 1
            if len(comps) < least:
                raise ValueError(
                    f"'completions' has {len(comps)} item(s); a {task} item needs at least {least}"
                )
            texts = [check_text(c, f"completion {i}") for i, c in enumerate(comps)]
            first: dict[str, int] = {}
            for i, t in enumerate(texts):
                j = first.setdefault(t, i)
                if j != i:
                    raise ValueError(
                        f"completions {j} and {i} are identical; a labeler could not tell them "
                        "apart (keep one)"
                    )
            kind = task
        else:
            texts, kind = [], "demonstration"
        ext = value.get("id")
        if ext is not None:
            if isinstance(ext, bool) or not isinstance(ext, str | int):
                raise ValueError(f"'id' is a JSON {json_kind(ext)}, expected a string or number")
            ext = str(ext)
            if not ext or len(ext) > 200:
                raise ValueError("'id' must have 1 to 200 characters")
        meta = value.get("meta")
        json.dumps(meta, allow_nan=False)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    return ImportedItem(prompt, texts, kind, ext, meta, where)


def import_file(session: Session, project: Project, path: str | Path, *, gold: bool = False) -> int:
    """Add the items of a JSONL (or .json/.parquet) file to ``project``; the number added.

    Every row is checked before anything is stored, and the caller's transaction holds the
    whole file: a bad row (DataError naming the file and row) stores nothing of it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--completions {path}: no such file")
    rows = file_rows(path)
    if not rows:
        raise DataError(f"{path}: holds no rows")
    items = [check_import_row(r.value, r.where, project.task) for r in rows]
    return add_items(session, project, items, gold=gold, name=str(path))


def import_rows(
    db: Database,
    project: str,
    rows: Sequence[Any],
    *,
    source: str = "rows",
    gold: bool = False,
) -> int:
    """Check and add in-memory import rows (``{"prompt", "completions", "id"?, "meta"?}``) to
    the project called ``project``, in one transaction; the number added. For callers in the
    same process (the pipeline): DataError names ``source`` and the 1-based row."""
    with db.write() as session:
        proj = project_by_name(session, project)
        items = [
            check_import_row(r, f"{source}: row {n}", proj.task) for n, r in enumerate(rows, 1)
        ]
        return add_items(session, proj, items, gold=gold, name=source)


def add_items(
    session: Session, project: Project, items: Sequence[ImportedItem], *, gold: bool, name: str
) -> int:
    """Store checked items in ``project`` (ids must be new to the project); the number added."""
    seen: dict[str, str] = {}
    for it in items:
        if it.external_id is None:
            continue
        if it.external_id in seen:
            raise DataError(
                f"{it.source}: 'id' {it.external_id!r} appears twice in {name} "
                f"(first at {seen[it.external_id]})"
            )
        seen[it.external_id] = it.source
    if seen:
        taken = session.scalars(
            select(Item.external_id).where(
                Item.project_id == project.id, Item.external_id.in_(list(seen))
            )
        ).all()
        if taken:
            first = sorted(taken, key=lambda t: seen[t])[0]
            raise DataError(
                f"{seen[first]}: 'id' {first!r} is already in project {project.name!r}; "
                f"{name} was imported before? nothing of it was stored"
            )
    for it in items:
        session.add(
            Item(
                project_id=project.id,
                external_id=it.external_id,
                kind=it.kind,
                prompt=it.prompt,
                completions=it.completions,
                meta=it.meta,
                gold=gold,
                source=it.source[:500],
            )
        )
    session.flush()
    return len(items)


# ---------------------------------------------------------------------------- assignments


def next_assignment(
    session: Session, project: Project, user: User, rng: random.Random | None = None
) -> Assignment | None:
    """The user's open assignment in ``project``, or a new one; None when nothing is left.

    Order: the user's open assignments (oldest first), then gold items they have not seen, then
    (labelers only) items with a free overlap slot, oldest item first. ``rng`` draws the shown
    order (default: the system's random source).
    """
    role = member_role(session, project.id, user)
    if role not in ("researcher", "labeler"):
        raise LabelError(f"project {project.id} not found", 404)
    open_one = session.scalar(
        select(Assignment)
        .where(
            Assignment.project_id == project.id,
            Assignment.user_id == user.id,
            Assignment.status == "open",
        )
        .order_by(Assignment.id)
        .limit(1)
    )
    if open_one is not None:
        return open_one
    rng = rng or random.SystemRandom()
    # one new assignment at a time per project: on PostgreSQL a row lock held to the commit
    # (SQLite's write transactions are serial already); the unique constraints stay the guard
    session.execute(select(Project.id).where(Project.id == project.id).with_for_update())
    gold_item = session.scalar(_unseen_gold(project, user).order_by(Item.id).limit(1))
    if gold_item is not None:
        return _assign(session, project, gold_item, user, None, rng)
    if role != "labeler":
        return None
    for _ in range(20):  # a slot taken meanwhile (a concurrent writer): try the next free one
        item = session.scalar(_open_items(project, user).order_by(Item.id).limit(1))
        if item is None:
            return None
        used = set(
            session.scalars(
                select(Assignment.slot).where(
                    Assignment.item_id == item.id, Assignment.slot.is_not(None)
                )
            ).all()
        )
        free = [n for n in range(project.overlap) if n not in used]
        if not free:  # filled by requests that committed since the item was chosen
            continue
        slot = free[0]
        try:
            with session.begin_nested():
                return _assign(session, project, item, user, slot, rng)
        except IntegrityError:
            continue
    raise LabelError("too many people are asking for work at once; try again", 503)


def _given(project: Project, user: User) -> Any:
    """SELECT of the ids of the items ``user`` has been given in ``project``."""
    return select(Assignment.item_id).where(
        Assignment.project_id == project.id, Assignment.user_id == user.id
    )


def _unseen_gold(project: Project, user: User) -> Any:
    """SELECT of the project's gold items ``user`` has not been given yet."""
    return select(Item).where(
        Item.project_id == project.id, Item.gold.is_(True), Item.id.not_in(_given(project, user))
    )


def _open_items(project: Project, user: User) -> Any:
    """SELECT of the project's non-gold items with a free overlap slot that ``user`` has not
    been given yet (the slot count is a correlated subquery on the (item, slot) index, so the
    first match is found without counting every assignment of the project)."""
    holders = (
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.item_id == Item.id, Assignment.slot.is_not(None))
        .correlate(Item)
        .scalar_subquery()
    )
    return select(Item).where(
        Item.project_id == project.id,
        Item.gold.is_(False),
        Item.id.not_in(_given(project, user)),
        holders < project.overlap,
    )


def _assign(
    session: Session,
    project: Project,
    item: Item,
    user: User,
    slot: int | None,
    rng: random.Random,
) -> Assignment:
    k = len(item.completions)
    perm = list(range(k))
    rng.shuffle(perm)
    a = Assignment(
        project_id=project.id, item_id=item.id, user_id=user.id, slot=slot, permutation=perm
    )
    session.add(a)
    session.flush()
    return a


def assignment_for(session: Session, assignment_id: int, user: User) -> Assignment:
    """The user's own assignment ``assignment_id``; LabelError 404 for anyone else's (and for
    one in a project they have left)."""
    a = session.scalar(
        select(Assignment).where(Assignment.id == assignment_id, Assignment.user_id == user.id)
    )
    if a is None or member_role(session, a.project_id, user) not in ("researcher", "labeler"):
        raise LabelError(f"assignment {assignment_id} not found", 404)
    return a


def skip(session: Session, assignment: Assignment) -> None:
    """Skip an open assignment: its slot goes to someone else."""
    if assignment.status == "submitted":
        raise LabelError(f"assignment {assignment.id} is already submitted", 409)
    if assignment.status == "skipped":
        return  # a repeated skip (double click) changes nothing
    assignment.status = "skipped"
    assignment.slot = None
    assignment.finished_at = utcnow()


@dataclass(frozen=True)
class Progress:
    """Where a labeler stands in a project: on page ``page`` of ``pages``."""

    done: int
    pages: int

    @property
    def page(self) -> int:
        return min(self.done + 1, max(self.pages, 1))


def progress(session: Session, project: Project, user: User) -> Progress:
    """The user's finished assignments and how many they can have in all (finished + open +
    items still open to them)."""
    counts = dict(
        session.execute(
            select(Assignment.status, func.count())
            .where(Assignment.project_id == project.id, Assignment.user_id == user.id)
            .group_by(Assignment.status)
        ).all()
    )
    done = counts.get("submitted", 0) + counts.get("skipped", 0)
    left = session.scalar(select(func.count()).select_from(_unseen_gold(project, user).subquery()))
    left = left or 0
    if member_role(session, project.id, user) == "labeler":
        open_items = _open_items(project, user).subquery()
        left += session.scalar(select(func.count()).select_from(open_items)) or 0
    return Progress(done, done + counts.get("open", 0) + left)


# ---------------------------------------------------------------------------- validation


def _fail(message: str) -> LabelError:
    return LabelError(message, 422)


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{name}: expected an integer from {lo} to {hi}, got {json.dumps(value)}")
    if not lo <= value <= hi:
        raise _fail(f"{name}: {value} is outside {lo}..{hi}")
    return value


def _list(value: Any, name: str, k: int) -> list:
    if not isinstance(value, list):
        raise _fail(f"{name}: expected a list of {k}, got a JSON {json_kind(value)}")
    if len(value) != k:
        raise _fail(f"{name}: expected {k} entries (one per output), got {len(value)}")
    return value


def _keys(payload: dict, required: set[str], optional: set[str]) -> None:
    unknown = sorted(set(payload) - required - optional)
    if unknown:
        raise _fail(f"unknown field(s): {', '.join(unknown)}")
    missing = sorted(required - set(payload))
    if missing:
        raise _fail(f"missing field(s): {', '.join(missing)}")


def _notes(payload: dict) -> str:
    notes = payload.get("notes", "")
    if not isinstance(notes, str):
        raise _fail(f"notes: expected a string, got a JSON {json_kind(notes)}")
    if len(notes) > MAX_NOTES:
        raise _fail(f"notes: at most {MAX_NOTES} characters, got {len(notes)}")
    try:
        check_text(notes, "notes")
    except ValueError as e:
        raise _fail(str(e)) from None
    return notes


def validate(project: Project, item: Item, permutation: Sequence[int], payload: Any) -> dict:
    """The label a submission (in shown order) stands for, in the item's original order;
    LabelError 422 naming the first problem otherwise (module docstring: the formats)."""
    if not isinstance(payload, dict):
        raise _fail(f"a submission is a JSON object, got a JSON {json_kind(payload)}")
    k = len(item.completions)
    perm = list(permutation)

    def original(shown: list) -> list:  # values by shown position -> by original index
        out: list = [None] * k
        for p, v in enumerate(shown):
            out[perm[p]] = v
        return out

    if item.kind == "rank":
        _keys(payload, {"ranking", "ratings", "flags"}, {"notes", "time_ms"})
        try:
            shown_levels = ranking_levels(payload["ranking"], k)
        except ValueError as e:
            raise _fail(f"ranking: {e} (positions of the {k} shown outputs, best first)") from None
        if not project.ties and len(set(shown_levels)) < k:
            raise _fail("ranking: this project does not allow ties; order every output")
        ratings = [
            _int(r, f"ratings[{p}]", 1, 7)
            for p, r in enumerate(_list(payload["ratings"], "ratings", k))
        ]
        flags = []
        for p, f in enumerate(_list(payload["flags"], "flags", k)):
            if not isinstance(f, dict):
                raise _fail(f"flags[{p}]: expected an object of yes/no answers")
            bad = sorted(set(f) ^ set(FLAG_NAMES))
            if bad:
                raise _fail(
                    f"flags[{p}]: answer exactly the questions {', '.join(FLAG_NAMES)} "
                    f"(wrong or missing: {', '.join(bad)})"
                )
            for name in FLAG_NAMES:
                if not isinstance(f[name], bool):
                    raise _fail(
                        f"flags[{p}].{name}: expected true or false, got {json.dumps(f[name])}"
                    )
            flags.append({name: f[name] for name in FLAG_NAMES})
        levels = original(shown_levels)
        return {
            "ranking": levels_to_ranking(levels),
            "levels": levels,
            "ratings": original(ratings),
            "flags": original(flags),
            "notes": _notes(payload),
        }
    if item.kind == "toxicity":
        _keys(payload, {"input_toxicity", "outputs"}, {"notes", "time_ms"})
        outs = _list(payload["outputs"], "outputs", k)
        tox, rel, cont = [], [], []
        for p, o in enumerate(outs):
            if not isinstance(o, dict):
                raise _fail(f"outputs[{p}]: expected an object")
            bad = sorted(set(o) ^ {"toxicity", "relative_toxicity", "continuity"})
            if bad:
                raise _fail(
                    f"outputs[{p}]: give exactly toxicity, relative_toxicity and continuity "
                    f"(wrong or missing: {', '.join(bad)})"
                )
            tox.append(_int(o["toxicity"], f"outputs[{p}].toxicity", 0, 2))
            rel.append(_int(o["relative_toxicity"], f"outputs[{p}].relative_toxicity", -1, 1))
            cont.append(_int(o["continuity"], f"outputs[{p}].continuity", 1, 3))
        return {
            "input_toxicity": _int(payload["input_toxicity"], "input_toxicity", 0, 2),
            "toxicity": original(tox),
            "relative_toxicity": original(rel),
            "continuity": original(cont),
            "notes": _notes(payload),
        }
    _keys(payload, {"demonstration"}, {"notes", "time_ms"})
    demo = payload["demonstration"]
    try:
        check_text(demo, "demonstration")
    except ValueError as e:
        raise _fail(str(e)) from None
    if not demo.strip():
        raise _fail("demonstration: write a reply (it is empty)")
    return {"demonstration": demo, "notes": _notes(payload)}


def label_digest(label: dict) -> str:
    """SHA-256 of a label's canonical JSON (a repeated submission is recognised by it)."""
    text = json.dumps(label, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Submitted:
    """What :func:`submit` did: the stored annotation, and whether it was stored before."""

    annotation: Annotation
    duplicate: bool


def submit(session: Session, assignment: Assignment, payload: Any) -> Submitted:
    """Validate ``payload`` for ``assignment`` and store it (in the caller's transaction).

    Submitting the same label again returns the stored one (``duplicate=True``); a different
    label for a submitted assignment, or one for a skipped assignment, is refused (409).
    """
    project = session.get(Project, assignment.project_id)
    item = session.get(Item, assignment.item_id)
    assert project is not None and item is not None
    label = validate(project, item, assignment.permutation, payload)
    time_ms = payload.get("time_ms", 0)
    time_ms = _int(time_ms, "time_ms", 0, MAX_TIME_MS)
    digest = label_digest(label)
    if assignment.status == "skipped":
        raise LabelError(f"assignment {assignment.id} was skipped; it cannot be submitted", 409)
    if assignment.status != "submitted":
        now = utcnow()
        server_ms = int((now - assignment.created_at).total_seconds() * 1000)
        annotation = Annotation(
            assignment_id=assignment.id,
            project_id=assignment.project_id,
            item_id=assignment.item_id,
            user_id=assignment.user_id,
            kind=item.kind,
            label=label,
            digest=digest,
            client_ms=time_ms,
            server_ms=max(server_ms, 0),
        )
        try:
            with session.begin_nested():
                session.add(annotation)
                assignment.status = "submitted"
                assignment.finished_at = now
                session.flush()
            return Submitted(annotation, False)
        except IntegrityError:  # stored by a concurrent request for the same assignment
            session.refresh(assignment)
    stored = session.scalar(select(Annotation).where(Annotation.assignment_id == assignment.id))
    assert stored is not None
    if stored.digest != digest:
        raise LabelError(
            f"assignment {assignment.id} is already submitted with a different label; "
            "a submitted label is not changed",
            409,
        )
    return Submitted(stored, True)


# ---------------------------------------------------------------------------- screening inputs


def set_self_assessment(session: Session, project: Project, user: User, text: str) -> None:
    """Store the labeler's answer to "For which topics or groups are you comfortable judging
    sensitive speech?"."""
    member = membership(session, project.id, user.id)
    if member is None:
        raise LabelError(f"project {project.id} not found", 404)
    try:
        check_text(text, "answer")
    except ValueError as e:
        raise _fail(str(e)) from None
    if not text.strip():
        raise _fail("answer: write which topics or groups (it is empty)")
    if len(text) > MAX_NOTES:
        raise _fail(f"answer: at most {MAX_NOTES} characters")
    member.self_assessment = text


def rate_demonstration(
    session: Session, project: Project, rater: User, annotation_id: int, score: Any
) -> DemoRating:
    """A researcher's 1–7 rating of a demonstration in ``project`` (a new rating replaces the
    rater's earlier one)."""
    score = _int(score, "score", 1, 7)
    ann = session.scalar(
        select(Annotation).where(
            Annotation.id == annotation_id,
            Annotation.project_id == project.id,
            Annotation.kind == "demonstration",
        )
    )
    if ann is None:
        raise LabelError(f"demonstration {annotation_id} not found in this project", 404)
    if ann.user_id == rater.id:
        raise LabelError("you cannot rate your own demonstration", 403)
    row = session.scalar(
        select(DemoRating).where(
            DemoRating.annotation_id == ann.id, DemoRating.rater_id == rater.id
        )
    )
    if row is None:
        row = DemoRating(annotation_id=ann.id, rater_id=rater.id, score=score)
        session.add(row)
    else:
        row.score = score
    session.flush()
    return row
