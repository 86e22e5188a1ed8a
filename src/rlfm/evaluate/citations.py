"""Verifiability of cited answers: citation recall and precision (Liu, Zhang & Liang 2023,
"Evaluating verifiability in generative search engines").

A judge reads each statement of a response with its citations and marks

- ``supported``: whether the statement is fully, partially or not supported by its citations
  taken together;
- each citation's ``support``: whether that citation alone fully, partially or not supports
  the statement.

Then, over a set of statements S with citations C:

    citation recall    = |{s ∈ S : supported(s) = full}| / |S|
    citation precision = |{c ∈ C : c is precise}| / |C|

where a citation c of statement s is *precise* when it fully supports s, or when it partially
supports s, no citation of s fully supports s, and s is fully supported by its citations
together (two partial citations that jointly support a statement are both precise; a partial
one next to a full one adds nothing and is not).

The micro figures pool every statement (citation) of a file; the macro figures average each
response's own recall (precision) over the responses that have a statement (a citation).

Input, one judged response a line (``read_judged``)::

    {"id": "...", "statements": [{"text": "...", "supported": "full"|"partial"|"none",
      "citations": [{"source": "...", "support": "full"|"partial"|"none"}]}]}

A line that breaks this layout, or a judgement that contradicts itself (a citation that fully
supports a statement the judge calls not fully supported, a statement with no citation called
supported), is a DataError naming the file, the line and the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlfm.data.rows import json_kind, json_lines, read_text
from rlfm.errors import DataError

Support = Literal["full", "partial", "none"]
LEVELS: tuple[str, ...] = ("full", "partial", "none")


@dataclass(frozen=True)
class Citation:
    """One citation of a statement and the judge's verdict on it alone."""

    source: str
    support: Support


@dataclass(frozen=True)
class Statement:
    """One statement of a response, the judge's verdict on it against all its citations, and
    the citations."""

    text: str
    supported: Support
    citations: tuple[Citation, ...]


@dataclass(frozen=True)
class Response:
    """One judged response."""

    id: str
    statements: tuple[Statement, ...]


def precise(statement: Statement) -> list[bool]:
    """Which citations of ``statement`` are precise (see the module docstring)."""
    any_full = any(c.support == "full" for c in statement.citations)
    jointly_full = statement.supported == "full"
    return [
        c.support == "full" or (c.support == "partial" and not any_full and jointly_full)
        for c in statement.citations
    ]


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def citation_scores(responses: Sequence[Response]) -> dict[str, float]:
    """Citation recall and precision over all statements / citations (micro), the same per
    response averaged (macro; NaN where no response has a statement / a citation), and the
    counts ``responses``, ``statements``, ``citations``."""
    supported = statements = precise_n = citations = 0
    recalls, precisions = [], []
    for r in responses:
        s_ok = sum(s.supported == "full" for s in r.statements)
        c_ok = sum(sum(precise(s)) for s in r.statements)
        c_all = sum(len(s.citations) for s in r.statements)
        supported, statements = supported + s_ok, statements + len(r.statements)
        precise_n, citations = precise_n + c_ok, citations + c_all
        if r.statements:
            recalls.append(s_ok / len(r.statements))
        if c_all:
            precisions.append(c_ok / c_all)
    return {
        "citation_recall": _ratio(supported, statements),
        "citation_precision": _ratio(precise_n, citations),
        "macro_recall": sum(recalls) / len(recalls) if recalls else math.nan,
        "macro_precision": sum(precisions) / len(precisions) if precisions else math.nan,
        "responses": len(responses),
        "statements": statements,
        "citations": citations,
    }


# ---------------------------------------------------------------------------- reading


def _level(value: Any, field: str) -> Support:
    if value not in LEVELS:
        shown = repr(value) if isinstance(value, str) else f"a JSON {json_kind(value)}"
        raise ValueError(f"{field} is {shown}; expected one of full, partial, none")
    return value  # type: ignore[return-value]


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{field} is a JSON {json_kind(value)}, expected an array")
    return value


def _statement(value: Any, field: str) -> Statement:
    if not isinstance(value, dict):
        raise ValueError(f"{field} is a JSON {json_kind(value)}, expected an object")
    text = value.get("text", "")
    if not isinstance(text, str):
        raise ValueError(f"{field}.text is a JSON {json_kind(text)}, expected a string")
    if "supported" not in value:
        raise ValueError(f"{field} has no 'supported' (full, partial or none)")
    supported = _level(value["supported"], f"{field}.supported")
    citations = []
    for j, c in enumerate(_list(value.get("citations", []), f"{field}.citations")):
        where = f"{field}.citations[{j}]"
        if not isinstance(c, dict):
            raise ValueError(f"{where} is a JSON {json_kind(c)}, expected an object")
        if "support" not in c:
            raise ValueError(f"{where} has no 'support' (full, partial or none)")
        source = c.get("source", "")
        if not isinstance(source, str):
            raise ValueError(f"{where}.source is a JSON {json_kind(source)}, expected a string")
        citations.append(Citation(source, _level(c["support"], f"{where}.support")))
    if supported != "full" and any(c.support == "full" for c in citations):
        raise ValueError(
            f"{field}: a citation fully supports the statement, so its citations together do "
            f"too, but 'supported' is {supported!r}"
        )
    if supported != "none" and not citations:
        raise ValueError(
            f"{field} has no citation, so nothing supports it, but 'supported' is {supported!r}"
        )
    return Statement(text, supported, tuple(citations))


def parse_response(value: Any, where: str) -> Response:
    """One judged response; DataError naming ``where`` and the field otherwise."""
    try:
        if not isinstance(value, dict):
            raise ValueError(f"is a JSON {json_kind(value)}, expected an object")
        if "statements" not in value:
            raise ValueError("has no 'statements' (an array of judged statements)")
        ident = value.get("id", "")
        if not isinstance(ident, str | int) or isinstance(ident, bool):
            raise ValueError(f"'id' is a JSON {json_kind(ident)}, expected a string")
        statements = tuple(
            _statement(s, f"statements[{i}]")
            for i, s in enumerate(_list(value["statements"], "'statements'"))
        )
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    return Response(str(ident), statements)


def read_judged(path: str | Path) -> list[Response]:
    """The judged responses of a JSON-lines file (module docstring); DataError naming the file
    and line of the first bad one, or the file when it holds no statement."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected judged responses, one JSON object a line)")
    responses = [
        parse_response(value, f"{path}: line {n}") for n, value in json_lines(path, read_text(path))
    ]
    if not any(r.statements for r in responses):
        raise DataError(f"{path}: holds no judged statement ({len(responses)} responses)")
    return responses
