"""Citation recall and precision: the lecture's three worked examples, the command's output,
and judged files with a bad line."""

from __future__ import annotations

import json
import math
import re

import pytest

from rlfm.cli import main
from rlfm.evaluate.citations import citation_scores, parse_response, read_judged


def judged(*statements):
    """A response from (supported, [support of each citation]) pairs."""
    return {
        "id": "r",
        "statements": [
            {
                "text": f"statement {i}",
                "supported": supported,
                "citations": [{"source": f"[{j}]", "support": s} for j, s in enumerate(cites, 1)],
            }
            for i, (supported, cites) in enumerate(statements, 1)
        ],
    }


# the slide's examples (reference/README.md): [1✅][2✗][3⚠], [1✅][2✗][4✗], [4✅][5⚠]
FIRST = judged(
    ("full", ["full", "none", "partial"]),
    ("full", ["full", "none", "none"]),
    ("full", ["full", "partial"]),
)
# [1⚠][2⚠] jointly full, [2✗], no citation
SECOND = judged(("full", ["partial", "partial"]), ("none", ["none"]), ("none", []))
# [1✅][2✅][3✗], none, none
THIRD = judged(("full", ["full", "full", "none"]), ("none", []), ("none", []))


@pytest.mark.parametrize(
    ("response", "recall", "precision"),
    [(FIRST, (3, 3), (3, 8)), (SECOND, (1, 3), (2, 3)), (THIRD, (1, 3), (2, 3))],
)
def test_the_lectures_worked_examples(response, recall, precision):
    """Recall 3/3 and precision 3/8 (the partial [3] and [5] sit next to a full citation, the
    [2], [4] of the second statement support nothing); 1/3 and 2/3 (two partial citations that
    together fully support a statement are both precise); 1/3 and 2/3 (two full, one none)."""
    s = citation_scores([parse_response(response, "example")])
    assert s["citation_recall"] == recall[0] / recall[1]
    assert s["citation_precision"] == precision[0] / precision[1]
    assert (s["statements"], s["citations"]) == (recall[1], precision[1])


def test_micro_pools_and_macro_averages(tmp_path, capsys):
    """Over the three examples together: recall (3 + 1 + 1) / 9, precision (3 + 2 + 2) / 14;
    macro recall (1 + 1/3 + 1/3) / 3, macro precision (3/8 + 2/3 + 2/3) / 3 — the command prints
    and writes exactly these."""
    data = tmp_path / "judged.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (FIRST, SECOND, THIRD)))
    out = tmp_path / "result.json"
    main(["eval", "citations", "--data", str(data), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result == pytest.approx(
        {
            "citation_recall": 5 / 9,
            "citation_precision": 7 / 14,
            "macro_recall": (1 + 1 / 3 + 1 / 3) / 3,
            "macro_precision": (3 / 8 + 2 / 3 + 2 / 3) / 3,
            "responses": 3,
            "statements": 9,
            "citations": 14,
        }
    )
    printed = capsys.readouterr().err
    assert "55.6%" in printed and "50.0%" in printed and "9 statements" in printed


def test_no_citation_at_all_has_no_precision(tmp_path):
    """A file whose statements cite nothing has recall 0 and no precision (null in the JSON)."""
    data = tmp_path / "judged.jsonl"
    data.write_text(json.dumps(judged(("none", []))) + "\n")
    s = citation_scores(read_judged(data))
    assert s["citation_recall"] == 0 and math.isnan(s["citation_precision"])
    out = tmp_path / "r.json"
    main(["eval", "citations", "--data", str(data), "--out", str(out)])
    assert json.loads(out.read_text())["citation_precision"] is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"line 2: not valid JSON"),
        ('["a"]', r"line 2: is a JSON array, expected an object"),
        ('{"id": "x"}', r"line 2: has no 'statements'"),
        (
            '{"statements": [{"text": "a", "supported": "yes", "citations": []}]}',
            r"line 2: statements\[0\]\.supported is 'yes'; expected one of full, partial, none",
        ),
        (
            '{"statements": [{"supported": "full", "citations": [{"source": "s"}]}]}',
            r"line 2: statements\[0\]\.citations\[0\] has no 'support'",
        ),
        (
            '{"statements": [{"supported": "partial", "citations": [{"support": "full"}]}]}',
            r"line 2: statements\[0\]: a citation fully supports the statement",
        ),
        (
            '{"statements": [{"supported": "full", "citations": []}]}',
            r"line 2: statements\[0\] has no citation",
        ),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(tmp_path, capsys, line, message):
    """The command stops with status 2 and one line naming the file, the line and the field."""
    data = tmp_path / "judged.jsonl"
    data.write_text(json.dumps(FIRST) + "\n" + line + "\n")
    with pytest.raises(SystemExit) as e:
        main(["eval", "citations", "--data", str(data)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "judged.jsonl: " in err and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
