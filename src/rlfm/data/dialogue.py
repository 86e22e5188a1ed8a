"""Dialogue in the built-in plays: speeches by scene, and (context → reply) pairs.

**The format of a play** (as in the files; :func:`parse_dialogue` reads it)::

    ROMEO AND JULIET                            title, author, PERSONS REPRESENTED: front matter
    ...
    ACT I.                                      act heading ("ACT I.", "Act 1", "ACT 2")
                                                (blank)
    Scene I. A public place.                    scene heading ("SCENE 1.", "Scene II.--...")
                                                (blank)
    [Enter Sampson and Gregory armed ...]       stage direction in [...], may span lines
                                                (blank)
    Sampson.                                    speaker line ("Sampson.", "LADY CAPULET.",
    Gregory, o' my word, we'll not carry coals. "1 Citizen.", "Ham."; "THESEUS" without the
                                                period in A Midsummer Night's Dream)
    Gregory.
    No, for then we should be colliers.         speech lines until the next speaker line

Odd forms that occur and are handled: a speech on the speaker's own line (``"CYMBELINE. Thou
foolish thing!"``), a stage direction on the speaker's line (``"PERICLES. [Aside.]"``), a blank
line between speaker line and speech, a speech that goes on after a stage direction and a blank
line (the same speaker keeps talking), ``{`` or ``}`` for a bracket, "SONG." lines inside
speeches, PROLOGUE/EPILOGUE/INDUCTION sections (each its own scene). Front matter before the first
heading is skipped. The poems (sonnets, "The Rape of Lucrece", ...) have no speaker lines and so
give no speeches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlfm.data.text import Document


@dataclass(frozen=True)
class Speech:
    """What one character says between two speaker lines (stage directions removed)."""

    play: str
    """The document name, e.g. "romeo_and_juliet"."""
    speaker: str
    """Normalised speaker name, e.g. "Sampson", "Lady Capulet", "1 Citizen"."""
    text: str
    """The speech's lines joined with "\\n" (leading indentation removed)."""


@dataclass(frozen=True)
class DialoguePair:
    """Two consecutive speeches of one scene by different speakers: context -> reply."""

    play: str
    context_speaker: str
    context: str
    reply_speaker: str
    reply: str


_HEADING = re.compile(
    r"""^(?:
        (?:ACT|Act|SCENE|Scene)\b[\s.:,-]*(?:[IVXLC]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b.*
                                                # ACT I.  Scene 2. A street.  ACT FIFTH.
      | (?:THE\s+)?(?:PROLOGUE|EPILOGUE|INDUCTION|Prologue|Epilogue|Induction)[.:]?
      | THE\s+END\.?
    )$""",
    re.VERBOSE,
)
"""A line that starts a new scene (or ends the play)."""

_NAME_WORD = r"[A-Za-z0-9'&-]+\.?"
_NAME = rf"[A-Z0-9][A-Za-z0-9'&-]*\.?(?:\s+{_NAME_WORD}){{0,5}}"
_SPEAKER_LINE = re.compile(rf"^({_NAME})\s*(?:[\[{{].*)?$")
"""A speaker line: a name, maybe a period, maybe a stage direction ("PERICLES. [Aside.]")."""
_CONNECTORS = frozenset({"and", "of", "the", "to", "de", "du", "la", "le", "&"})
"""Lower-case words allowed inside a speaker name ("DROMIO OF SYRACUSE", "Alb. and Corn.")."""
_NOT_SPEAKERS = frozenset({"song", "the song", "finis", "the end"})
"""Name-shaped lines that are not speakers (lower-cased)."""
_ROMAN = re.compile(r"^[IVXLC]+$")


def _speaker_name(candidate: str, has_period: bool) -> str | None:
    """`candidate` as a normalised speaker name if it looks like one, else None."""
    words = candidate.split()
    if len(candidate) < 2 or len(candidate) > 40:
        return None
    if candidate.lower().rstrip(".") in _NOT_SPEAKERS:
        return None
    if all(_ROMAN.match(w.rstrip(".")) for w in words):
        return None  # "II." numbering a song or poem
    for w in words:
        if w.lower() in _CONNECTORS:
            continue
        if not (w[0].isupper() or w[0].isdigit()):
            return None  # a verse line: "Saddle my horse."
    if not has_period and not candidate.isupper():
        return None  # without a period only ALL-CAPS names count ("THESEUS")
    return _normalise_speaker(candidate)


def _normalise_speaker(name: str) -> str:
    """A speaker name without its period, ALL-CAPS words title-cased, roman numerals kept:
    "LADY CAPULET." -> "Lady Capulet", "KING HENRY V." -> "King Henry V", "Ham." -> "Ham"."""
    words = name.rstrip(".").split()
    out = []
    for i, w in enumerate(words):
        if w.isupper() and not _ROMAN.match(w.rstrip(".")):
            low = w.lower()
            w = (
                low
                if i > 0 and low in _CONNECTORS
                else "-".join(p.capitalize() for p in low.split("-"))
            )
        out.append(w)
    return " ".join(out)


def _strip_directions(line: str, in_direction: bool) -> tuple[str, bool]:
    """`line` without stage directions; whether a direction is still open at its end.

    Directions are ``[...]``; ``{`` and ``}`` also occur as brackets in the files.
    """
    out = []
    for ch in line:
        if in_direction:
            if ch in "]}":
                in_direction = False
        elif ch in "[{":
            in_direction = True
        elif ch not in "]}":
            out.append(ch)
    return " ".join("".join(out).split()), in_direction


def _speaker_at(lines: list[str], i: int, known: set[str] | None) -> tuple[str, str] | None:
    """(speaker, speech on the same line) if line i is a speaker line, else None.

    A speaker line follows a blank line or a stage direction. With `known` (the names found on
    lines of their own), a known name followed by a period and speech on the same line counts.
    """
    if i == 0:
        return None  # the title
    line = lines[i].strip()
    prev = lines[i - 1].strip()
    if prev and not prev.endswith(("]", "}")):
        return None  # inside a speech, or the second line of a heading
    m = _SPEAKER_LINE.match(line)
    if m:
        candidate = m.group(1)
        has_period = line[len(candidate) :].lstrip().startswith(".") or candidate.endswith(".")
        next_line = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if has_period or next_line:
            name = _speaker_name(candidate.rstrip("."), has_period)
            if name is not None:
                rest = line[len(m.group(1)) :].lstrip().lstrip(".")
                return name, rest
    if known:
        # "CYMBELINE. Thou foolish thing!": a known name, a period, the speech.
        for m in re.finditer(r"\.\s+", line[:48]):
            name = _speaker_name(line[: m.start()], has_period=True)
            rest = line[m.end() :]
            if name is not None and name in known and rest[:1] not in ("[", "{"):
                return name, rest
    return None


def parse_dialogue(doc: Document) -> list[list[Speech]]:
    """The speeches of a play, grouped by scene: ``scenes[k]`` is scene k's speeches in order.

    A scene starts at every ACT/SCENE/PROLOGUE/EPILOGUE/INDUCTION heading; text before the first
    heading (title, dramatis personae) is skipped when the play has headings. Speaker names are
    normalised (trailing period dropped, spaces collapsed, ALL-CAPS names title-cased); stage
    directions are removed, blank lines dropped, each line stripped; empty speeches and scenes
    with no speech are left out. A text with no speaker lines (a poem) gives ``[]``.
    """
    lines = doc.text.replace("\r\n", "\n").split("\n")
    known: set[str] = set()
    for i in range(len(lines)):
        hit = _speaker_at(lines, i, known=None)
        if hit is not None:
            known.add(hit[0])
    started = not any(_HEADING.match(line.strip()) for line in lines)
    if started and len(known) < 2:
        return []  # no headings and at most one "speaker": a poem, not a play
    scenes: list[list[Speech]] = []
    scene: list[Speech] = []
    speaker: str | None = None
    speech: list[str] = []
    in_direction = False

    def end_speech() -> None:
        if speaker is not None and speech:
            scene.append(Speech(play=doc.name, speaker=speaker, text="\n".join(speech)))
        speech.clear()

    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            in_direction = False  # an unclosed bracket never runs past a blank line
            continue
        if not in_direction and _HEADING.match(line):
            end_speech()
            if scene:
                scenes.append(scene)
            scene, speaker, started = [], None, True
            continue
        if not started:
            continue
        if not in_direction:
            hit = _speaker_at(lines, i, known)
            if hit is not None:
                end_speech()
                speaker, line = hit
            elif line.lower().rstrip(".") in _NOT_SPEAKERS:
                continue
        text, in_direction = _strip_directions(line, in_direction)
        if text:
            speech.append(text)
    end_speech()
    if scene:
        scenes.append(scene)
    return scenes


def dialogue_pairs(doc: Document) -> list[DialoguePair]:
    """(context, reply) pairs: consecutive speeches of one scene by different speakers."""
    pairs = []
    for scene in parse_dialogue(doc):
        for a, b in zip(scene, scene[1:]):
            if a.speaker != b.speaker:
                pairs.append(
                    DialoguePair(
                        play=doc.name,
                        context_speaker=a.speaker,
                        context=a.text,
                        reply_speaker=b.speaker,
                        reply=b.text,
                    )
                )
    return pairs
