"""The ``rlfm label`` commands as a user runs them, import checks, the simulated labelers, the
export read back by the reward stage's reader, and the schema migrations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from rlfm.cli import main
from rlfm.data.preferences import load_preferences
from rlfm.feedback import labels as lb
from rlfm.feedback.db import Annotation, Assignment, Item, open_db
from rlfm.feedback.export import export_labels
from rlfm.feedback.simulate import simulate

TEXTS = [
    "Good my lord, I pray you, your lady sleeps.",
    "Away, thou knave!\r\nBegone.",  # a CR LF inside a completion survives byte for byte
    "<script>alert('x')</script> — “quotes” and emoji 🎭",
    "  leading and trailing spaces  ",
]


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``rlfm <args>`` in-process: (exit status, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def items_file(tmp_path: Path, n: int = 6, name: str = "items.jsonl") -> Path:
    rows = [
        {"id": f"x{i}", "prompt": f"Romeo.\nWhere is she, {i}?\n\nNurse.\n",
         "completions": TEXTS[i % 4:] + TEXTS[: i % 4], "meta": {"source": "test"}}
        for i in range(n)
    ]  # fmt: skip
    return write_jsonl(tmp_path / name, rows)


def test_the_commands_end_to_end(tmp_path, capsys):
    """admin create → project create → import → simulate → stats → export; the exported
    rankings and pairs are read by the reward stage's loader, texts byte-identical."""
    db = str(tmp_path / "labels.db")
    code, out, _ = run(
        capsys, "label", "admin", "create", "--db", db, "--email", "Root@Example.org"
    )
    assert code == 0 and "http://127.0.0.1:8000/invite/" in out and "root@example.org" in out
    code, out, _ = run(
        capsys, "label", "project", "create", "--db", db, "--name", "demo", "--overlap", "3"
    )
    assert code == 0 and "project 'demo' (id 1)" in out
    code, out, _ = run(
        capsys,
        "label",
        "invite",
        "--db",
        db,
        "--email",
        "ada@example.org",
        "--project",
        "demo",
        "--url",
        "https://labels.example.org",
    )
    assert code == 0 and "https://labels.example.org/invite/" in out
    code, out, _ = run(
        capsys,
        "label",
        "import",
        "--db",
        db,
        "--project",
        "demo",
        "--completions",
        str(items_file(tmp_path)),
    )
    assert code == 0 and "imported 6 items" in out
    gold = write_jsonl(
        tmp_path / "gold.jsonl",
        [{"id": "g1", "prompt": "Juliet.\nGood night!\n\nRomeo.\n", "completions": TEXTS}],
    )
    code, out, _ = run(
        capsys,
        "label",
        "import",
        "--db",
        db,
        "--project",
        "demo",
        "--completions",
        str(gold),
        "--gold",
    )
    assert code == 0 and "imported 1 items" in out
    code, out, _ = run(
        capsys,
        "label",
        "simulate",
        "--db",
        db,
        "--project",
        "demo",
        "--labelers",
        "3",
        "--seed",
        "1",
    )
    assert code == 0 and "21 labels submitted in project 'demo'" in out  # 6 × 3 + gold × 3
    assert "simulated-researcher@rlfm.invalid: 1 gold items labelled" in out
    code, out, _ = run(capsys, "label", "stats", "--db", db, "--project", "demo", "--per-item")
    assert code == 0
    assert (
        "pairwise comparisons agree" in out
        and "Fleiss' kappa" in out
        and "simulated-labeler-3" in out
    )
    assert "x5" in out  # the per-item table
    prefs = tmp_path / "prefs.jsonl"
    code, out, _ = run(
        capsys, "label", "export", "--db", db, "--project", "demo", "--out", str(prefs)
    )
    assert code == 0 and "wrote 21 rankings rows" in out
    rows = [json.loads(line) for line in prefs.read_text(encoding="utf-8").splitlines()]
    loaded = load_preferences(prefs)
    assert len(loaded) == 21
    for row, r in zip(rows, loaded):
        assert r.completions == tuple(row["completions"])
        if row["id"] == "g1":
            assert row["completions"] == TEXTS
            continue
        src = json.loads(
            (tmp_path / "items.jsonl").read_text(encoding="utf-8").splitlines()[int(row["id"][1:])]
        )
        assert row["prompt"] == src["prompt"] and row["completions"] == src["completions"]
        assert sorted(r.levels) != [0] * 4
    pairs = tmp_path / "pairs.jsonl"
    code, out, _ = run(
        capsys,
        "label",
        "export",
        "--db",
        db,
        "--project",
        "demo",
        "--format",
        "pairs",
        "--out",
        str(pairs),
    )
    assert code == 0 and "wrote 126 pairs rows" in out  # 21 rankings × C(4, 2)
    assert len(load_preferences(pairs)) == 126


def test_export_holds_exactly_the_stored_rankings(sqlite_db, tmp_path):
    """Each exported row is one labeler's stored ranking (original output order), and the
    pairs are exactly its ordered pairs."""
    pid = _project(sqlite_db, tmp_path)
    simulate(sqlite_db, "p", labelers=2, seed=3)
    r = export_labels(sqlite_db, "p", tmp_path / "r.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    with sqlite_db.read() as s:
        anns = s.scalars(
            select(Annotation)
            .where(Annotation.project_id == pid)
            .order_by(Annotation.item_id, Annotation.id)
        ).all()
        stored = [(a.label["ranking"], f"labeler-{a.user_id}") for a in anns]
    assert r.rows == len(rows) == len(stored)
    assert [(row["ranking"], row["labeler"]) for row in rows] == stored
    export_labels(sqlite_db, "p", tmp_path / "p.jsonl", "pairs")
    pairs = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    expected = []
    for row in rows:
        order = [i for g in row["ranking"] for i in (g if isinstance(g, list) else [g])]
        for a in range(len(order)):
            for b in range(a + 1, len(order)):
                expected.append((row["completions"][order[a]], row["completions"][order[b]]))
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == sorted(expected)


def _project(db, tmp_path, name: str = "p", **kw) -> int:
    with db.write() as s:
        p = lb.create_project(s, name, **kw)
        lb.import_file(s, p, items_file(tmp_path, 8, f"{name}.jsonl"))
        return p.id


BAD_ROWS = [
    ("not json", "line 2: not valid JSON"),
    ([1, 2], "line 2: is a JSON array, expected an object"),
    ({"completions": ["a", "b"]}, "line 2: missing field 'prompt'"),
    (
        {"prompt": "x", "completions": "ab"},
        "line 2: 'completions' is a JSON string, expected a list",
    ),
    ({"prompt": "x", "completions": ["a"]}, "a rank item needs at least 2"),
    ({"prompt": "x", "completions": ["a", "a"]}, "completions 0 and 1 are identical"),
    ({"prompt": "x", "completions": ["a", 3]}, "completion 1 is a JSON number"),
    (
        {"prompt": "x", "completion": ["a", "b"]},
        "unknown field(s) 'completion' (did you mean 'completions'?)",
    ),
    ({"prompt": "x\u0000", "completions": ["a", "b"]}, "'prompt' contains a NUL character"),
    ({"prompt": "x", "completions": ["a", "b"], "id": "x0"}, "line 2: 'id' 'x0' appears twice"),
    ({"prompt": "x", "completions": ["a", "b"], "id": True}, "'id' is a JSON boolean"),
]


@pytest.mark.parametrize("bad,message", BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_a_bad_import_row_stores_nothing_of_the_file(tmp_path, capsys, bad, message):
    """The import stops naming the file and the row, and nothing of the file is stored."""
    db = str(tmp_path / "labels.db")
    run(capsys, "label", "project", "create", "--db", db, "--name", "p")
    good = {"id": "x0", "prompt": "Romeo.\n", "completions": ["a", "b"]}
    path = tmp_path / "bad.jsonl"
    line = bad if isinstance(bad, str) else json.dumps(bad)
    path.write_text(json.dumps(good) + "\n" + line + "\n" + json.dumps({**good, "id": "x9"}) + "\n")
    code, _, err = run(
        capsys, "label", "import", "--db", db, "--project", "p", "--completions", str(path)
    )
    assert code == 2
    assert f"{path}: " in err and message in err, err
    database = open_db(db)
    with database.read() as s:
        assert s.scalar(select(func.count()).select_from(Item)) == 0
    database.close()


def test_importing_the_same_ids_twice_is_refused(tmp_path, capsys):
    db = str(tmp_path / "labels.db")
    run(capsys, "label", "project", "create", "--db", db, "--name", "p")
    f = items_file(tmp_path)
    assert (
        run(capsys, "label", "import", "--db", db, "--project", "p", "--completions", str(f))[0]
        == 0
    )
    code, _, err = run(
        capsys, "label", "import", "--db", db, "--project", "p", "--completions", str(f)
    )
    assert (
        code == 2
        and "'id' 'x0' is already in project 'p'" in err
        and "nothing of it was stored" in err
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["label", "import", "--project", "p", "--completions", "nope.jsonl"],
            "--completions nope.jsonl: no such file",
        ),
        (
            ["label", "import", "--project", "p"],
            "give either --completions FILE or --prompts FILE --policy MODEL",
        ),
        (["label", "import", "--project", "p", "--prompts", "x.jsonl"], "--prompts needs --policy"),
        (["label", "import", "--completions", "x.jsonl"], "--project: name the project"),
        (
            ["label", "export", "--project", "nope"],
            "--project 'nope': no such project (projects: 'p')",
        ),
        (["label", "stats", "--project", "nope"], "no such project"),
        (["label", "simulate", "--project", "nope"], "no such project"),
        (["label", "invite", "--email", "a@b.c", "--project", "nope"], "no such project"),
        (["label", "invite", "--email", "not-an-email", "--project", "p"], "not an email address"),
        (["label", "project", "create", "--name", "p"], "a project of that name exists already"),
        (["label", "project", "create", "--name", "q", "--overlap", "0"], "overlap: must be ≥ 1"),
        (["label", "admin", "create"], "--email: give the admin's email address"),
        (
            ["label", "serve", "--host", "0.0.0.0"],
            "would send passwords and session cookies in clear text",
        ),
    ],
)
def test_user_errors_name_the_culprit(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    db = str(tmp_path / "labels.db")
    run(capsys, "label", "project", "create", "--db", db, "--name", "p")
    code, out, err = run(capsys, *args, "--db", db)
    assert code == 2, out + err
    assert message in err + out, err + out


def test_commands_refuse_a_database_file_that_does_not_exist(tmp_path, capsys):
    code, _, err = run(
        capsys, "label", "stats", "--db", str(tmp_path / "typo.db"), "--project", "p"
    )
    assert code == 2 and "no such database file" in err
    assert not (tmp_path / "typo.db").exists()


def test_simulate_goes_through_the_submit_code_path(sqlite_db, tmp_path, monkeypatch):
    """Every simulated label is stored by labels.submit (the web form's path), each item gets
    its `overlap` labels, and the same seed gives the same labels."""
    calls = []
    real = lb.submit

    def spy(session, assignment, payload):
        calls.append(payload)
        return real(session, assignment, payload)

    monkeypatch.setattr(lb, "submit", spy)
    _project(sqlite_db, tmp_path, overlap=2)
    result = simulate(sqlite_db, "p", labelers=3, seed=7)
    assert result.total == len(calls) == 16  # 8 items × overlap 2
    with sqlite_db.read() as s:
        per_item = s.execute(
            select(Annotation.item_id, func.count()).group_by(Annotation.item_id)
        ).all()
        assert sorted(n for _, n in per_item) == [2] * 8
        first = [a.label for a in s.scalars(select(Annotation).order_by(Annotation.id))]
        assert (
            s.scalar(
                select(func.count()).select_from(Assignment).where(Assignment.status == "open")
            )
            == 0
        )
    assert simulate(sqlite_db, "p", labelers=3, seed=7).total == 0  # nothing left to do
    other = open_db(tmp_path / "again.db")
    _project(other, tmp_path, overlap=2)
    simulate(other, "p", labelers=3, seed=7)
    with other.read() as s:
        assert [a.label for a in s.scalars(select(Annotation).order_by(Annotation.id))] == first
    other.close()


def test_simulated_labels_follow_the_gold_rule(sqlite_db, tmp_path):
    """With no noise the careful simulated labeler ranks by the gold score: the insulting
    reply ("Away, thou knave!") is never ranked first, and its 'inappropriate' flag is set."""
    _project(sqlite_db, tmp_path, overlap=1)
    simulate(sqlite_db, "p", labelers=1, noise=0.0)
    with sqlite_db.read() as s:
        for a in s.scalars(select(Annotation)):
            item = s.get(Item, a.item_id)
            rude = item.completions.index(TEXTS[1])
            assert a.label["levels"][rude] > 0
            assert a.label["flags"][rude]["inappropriate"] is True


def test_screening_and_export_filters(sqlite_db, tmp_path):
    """Gold items: the simulated researcher labels them with the noiseless rule; labelers pass
    screening when their agreement with it reaches the threshold. --screened-only and
    --min-agreement remove labels; an aggregate writes one ranking per item."""
    with sqlite_db.write() as s:
        p = lb.create_project(s, "p", overlap=3, pass_threshold=0.5)
        lb.import_file(s, p, items_file(tmp_path, 6))
    gold_rows = [
        {
            "id": f"g{i}",
            "prompt": f"Juliet.\nGood night, sweet {i}!\n\nRomeo.\n",
            "completions": TEXTS,
        }
        for i in range(3)
    ]
    with sqlite_db.write() as s:
        lb.import_file(
            s,
            s.scalar(select(lb.Project)),
            write_jsonl(tmp_path / "gold.jsonl", gold_rows),
            gold=True,
        )
    result = simulate(sqlite_db, "p", labelers=3, seed=0, noise=1.0)
    assert result.gold_reference == 3
    from rlfm.feedback.stats import project_stats

    with sqlite_db.read() as s:
        st = project_stats(s, s.scalar(select(lb.Project)))
    assert all(ls.gold_ranking is not None and ls.self_assessment for ls in st.per_labeler)
    assert [ls.passed for ls in st.per_labeler] == [
        ls.gold_ranking >= 0.5 and ls.gold_flags >= 0.5 for ls in st.per_labeler
    ]
    all_rows = export_labels(sqlite_db, "p", tmp_path / "all.jsonl").rows
    assert all_rows == 27  # (6 + 3 gold) items × 3 labelers
    passed = sum(ls.passed for ls in st.per_labeler)
    assert (
        export_labels(sqlite_db, "p", tmp_path / "s.jsonl", screened_only=True).rows == 9 * passed
    )
    with sqlite_db.write() as s:  # nobody answered the self-assessment: nobody passes
        for m in s.scalars(select(lb.Membership).where(lb.Membership.role == "labeler")):
            m.self_assessment = None
    with pytest.raises(
        Exception, match="nothing to export: all 27 rank labels were left out by --screened-only"
    ):
        export_labels(sqlite_db, "p", tmp_path / "none.jsonl", screened_only=True)
    assert not (tmp_path / "none.jsonl").exists()
    agreeing = {
        it.item_id for it in st.per_item if it.agreement is not None and it.agreement >= 0.9
    }
    r = export_labels(sqlite_db, "p", tmp_path / "m.jsonl", min_agreement=0.9)
    assert r.rows == 3 * len(agreeing) and r.left_out == 27 - 3 * len(agreeing)
    for how in ("ranked-pairs", "bradley-terry"):
        r = export_labels(sqlite_db, "p", tmp_path / f"{how}.jsonl", aggregate=how)
        assert r.rows == 9 and len(load_preferences(tmp_path / f"{how}.jsonl")) == 9


def test_demonstrations_export_as_sft_rows(sqlite_db, tmp_path):
    from sqlalchemy import select as sel

    with sqlite_db.write() as s:
        p = lb.create_project(s, "p", overlap=1)
        lb.import_file(
            s, p, write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Greet the king.", "id": "d1"}])
        )
        u = lb.User(email="ada@example.org")
        s.add(u)
        s.flush()
        s.add(lb.Membership(project_id=p.id, user_id=u.id, role="labeler"))
        s.flush()
        a = lb.next_assignment(s, p, u)
        lb.submit(s, a, {"demonstration": "Hail, my liege!\nLong may you reign."})
    with pytest.raises(Exception, match="no rank labels have been submitted"):
        export_labels(sqlite_db, "p", tmp_path / "r.jsonl")
    export_labels(sqlite_db, "p", tmp_path / "sft.jsonl", "demonstrations")
    rows = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert rows == [
        {
            "prompt": "Greet the king.",
            "completion": "Hail, my liege!\nLong may you reign.",
            "id": "d1",
            "labeler": "labeler-1",
        }
    ]
    with sqlite_db.read() as s:
        assert s.scalar(sel(Item.kind)) == "demonstration"


def test_import_samples_completions_from_a_policy(tmp_path, capsys):
    """--prompts --policy: a tiny GPT built in code samples K replies per prompt with
    rollout.generate; duplicates are kept once; the items are ready to label."""
    from transformers import GPT2Config

    from rlfm.models.presets import build_model
    from rlfm.models.tokenizer import train_bpe_tokenizer

    corpus = [
        "Romeo.\nGood morrow, sweet lady. I pray you, sir, be kind.\n\nNurse.\nAway, knave!\n"
    ] * 30
    tok = train_bpe_tokenizer(corpus, 300)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id)  # fmt: skip
    model_dir = tmp_path / "policy"
    build_model(cfg, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": "Romeo.\nGood morrow.\n\nNurse.\n", "id": "a"},
            {"prompt": "Nurse.\nMadam!\n\nJuliet.\n"},
        ],
    )
    db = str(tmp_path / "labels.db")
    run(capsys, "label", "project", "create", "--db", db, "--name", "p", "--k", "3")
    code, out, err = run(capsys, "label", "import", "--db", db, "--project", "p", "--prompts", str(prompts),
                         "--policy", str(model_dir), "--max-new-tokens", "8", "--no-clean")  # fmt: skip
    assert code == 0, err
    assert "(3 sampled completions per prompt)" in out
    database = open_db(db)
    with database.read() as s:
        items = s.scalars(select(Item).order_by(Item.id)).all()
    database.close()
    assert 1 <= len(items) <= 2
    for it in items:
        assert 2 <= len(it.completions) <= 3 and len(set(it.completions)) == len(it.completions)
        assert it.kind == "rank"
    assert items[0].external_id == "a" or len(items) == 1
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "completions": ["a", "b"]}])
    code, _, err = run(
        capsys,
        "label",
        "import",
        "--db",
        db,
        "--project",
        "p",
        "--prompts",
        str(bad),
        "--policy",
        str(model_dir),
    )
    assert code == 2 and "--prompts takes prompts only" in err


# ---------------------------------------------------------------------------- migrations


def test_the_migrations_build_exactly_the_models_schema(tmp_path):
    """Alembic's comparison of the migrated database with the SQLAlchemy models finds no
    difference (a model changed without a migration fails here)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from rlfm.feedback.db import Base

    database = open_db(tmp_path / "m.db")
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    database.close()
    assert diff == []


def test_a_database_from_a_newer_rlfm_is_refused(tmp_path):
    from sqlalchemy import text

    from rlfm.feedback.db import LabelError

    database = open_db(tmp_path / "m.db")
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    database.close()
    with pytest.raises(LabelError, match="schema revision '9999' is newer than this version"):
        open_db(tmp_path / "m.db")


def test_in_process_import_simulate_export_as_the_pipeline_calls_them(tmp_path):
    """The pipeline's path, no server: rows in memory → import_rows → simulate → export_labels
    → the reward stage's loader. A bad row names its source and row and stores nothing."""
    from rlfm.data.preferences import load_preferences

    db = open_db(tmp_path / "labels.db")
    with db.write() as s:
        lb.create_project(s, "rm", overlap=3)
    rows = [
        {"prompt": f"Romeo.\nHow now, {i}?\n\nNurse.\n", "completions": TEXTS} for i in range(5)
    ]
    with pytest.raises(Exception, match=r"built-in: row 6: 'completions' has 1 item"):
        lb.import_rows(db, "rm", [*rows, {"prompt": "x", "completions": ["y"]}], source="built-in")
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Item)) == 0
    assert lb.import_rows(db, "rm", rows, source="built-in") == 5
    assert simulate(db, "rm", labelers=3).total == 15
    r = export_labels(db, "rm", tmp_path / "prefs.jsonl")
    assert r.rows == 15 and len(load_preferences(r.path)) == 15
    db.close()
