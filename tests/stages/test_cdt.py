"""rlfm cdt train / eval / table: learning (CDT keeps two cost thresholds, BC-All does not),
the baselines and ablations, the result file and Table 1, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from offline_fixtures import cartpole_dataset, speed_run_dataset

from rlfm.errors import ConfigError, DataError
from rlfm.stages import cdt, cdt_eval, cdt_table

DATASET = ("test/speedrun/mixed-v0",)
THRESHOLDS = ("5,20",)
SMALL = dict(
    context=5,
    hidden=32,
    layers=2,
    heads=2,
    dropout=0.0,
    batch_size=64,
    lr=1e-3,
    warmup_steps=20,
    cost_thresholds=THRESHOLDS,
    eval_episodes=0,
    device="cpu",
    precision="fp32",
)


@pytest.fixture(scope="module")
def minari_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    speed_run_dataset(root, DATASET[0], episodes=300)
    cartpole_dataset(root, "test/cartpole/mixed-v0", episodes=5)
    return root


@pytest.fixture(autouse=True)
def _datasets(minari_dir, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_dir))


@pytest.fixture(scope="module")
def results(minari_dir, tmp_path_factory):
    """CDT and BC-All trained on the same data, each evaluated at thresholds 5 and 20 (the
    dataset's frontier there: episodes of cost 2 and 13; BC-All's episodes cost about 21)."""
    import os

    os.environ["MINARI_DATASETS_PATH"] = str(minari_dir)
    root = tmp_path_factory.mktemp("cdt")
    out = {}
    for method, steps in (("cdt", 400), ("bc-all", 400)):
        run = root / method
        cdt.train(cdt.Config(dataset=DATASET, out=run, method=method, steps=steps, **SMALL))
        out[method] = cdt_eval.evaluate(
            cdt_eval.Config(
                model=(run,),
                cost_thresholds=THRESHOLDS,
                episodes=8,
                out=run / "eval/result.json",
                device="cpu",
            )
        )
    return root, out


def test_cdt_keeps_both_thresholds_while_bc_all_does_not(results):
    """Learning: normalised cost ≤ 1 at κ = 5 and κ = 20 for CDT (one model, zero-shot);
    BC-All, which imitates every episode, exceeds them."""
    _, r = results
    for method in ("cdt", "bc-all"):
        print(
            method,
            [
                (x["cost_threshold"], round(x["return_mean"], 1), x["cost_mean"])
                for x in r[method]["results"]
            ],
        )
    assert all(x["normalised_cost"] <= 1 for x in r["cdt"]["results"])
    assert all(x["normalised_cost"] > 1 for x in r["bc-all"]["results"])
    # not safe by standing still: CDT's return rises with the budget
    ret = [x["return_mean"] for x in r["cdt"]["results"]]
    assert ret[1] > ret[0]


def test_result_file_keys(results):
    root, r = results
    saved = json.loads((root / "cdt/eval/result.json").read_text())
    assert saved["method"] == "cdt" and saved["task"] == "rlfm/SpeedRun-v0"
    for row in saved["results"]:
        assert {
            "cost_threshold",
            "target_return",
            "return_mean",
            "cost_mean",
            "normalised_return",
            "normalised_cost",
        } <= set(row)
        assert row["normalised_cost"] == pytest.approx(row["cost_mean"] / row["cost_threshold"])
    avg = saved["average"]
    assert avg["normalised_cost"] == pytest.approx(
        sum(x["normalised_cost"] for x in saved["results"]) / 2
    )
    assert (root / "cdt/eval/result.png").is_file()


def test_table_in_the_lectures_layout(results, tmp_path):
    root, _ = results
    text = cdt_table.run(
        cdt_table.Config(
            models=(root / "cdt/eval/result.json", root / "bc-all/eval"), out=tmp_path / "t.md"
        )
    )
    lines = text.splitlines()
    assert lines[0].startswith("| Method | rlfm/SpeedRun-v0 reward ↑ | rlfm/SpeedRun-v0 cost ↓")
    assert "Average reward ↑" in lines[0]
    cdt_row = next(x for x in lines if x.startswith("| cdt |"))
    bc_row = next(x for x in lines if x.startswith("| bc-all |"))
    assert "**" in cdt_row and "★" in cdt_row  # safe, and the best safe one
    assert "**" not in bc_row  # unsafe: plain
    assert (tmp_path / "t.md").read_text() == text


def test_malformed_result_files_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=f"result: {bad} is not valid JSON"):
        cdt_table.run(cdt_table.Config(models=(bad,), out=tmp_path / "t.md"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"method": "cdt", "task": "x"}))
    with pytest.raises(DataError, match="lacks average"):
        cdt_table.run(cdt_table.Config(models=(other,), out=tmp_path / "t.md"))
    typed = tmp_path / "typed.json"
    typed.write_text(
        json.dumps(
            {
                "method": "cdt",
                "task": "x",
                "average": {"normalised_return": "high", "normalised_cost": 1},
            }
        )
    )
    with pytest.raises(DataError, match="average.normalised_return is 'high', not a number"):
        cdt_table.run(cdt_table.Config(models=(typed,), out=tmp_path / "t.md"))


@pytest.mark.parametrize(
    "method", ["cdt-no-augment", "cdt-no-entropy", "cdt-deterministic", "dt-cost", "bc-safe"]
)
def test_every_baseline_and_ablation_trains_and_evaluates(method, tmp_path):
    run = tmp_path / method
    summary = cdt.train(cdt.Config(dataset=DATASET, out=run, method=method, steps=4, **SMALL))
    assert summary["loss"] == summary["loss"]  # finite
    r = cdt_eval.evaluate(
        cdt_eval.Config(model=(run,), cost_thresholds=THRESHOLDS, episodes=1, out=run / "r.json")
    )
    assert r["method"] == method and len(r["results"]) == 2


def test_bad_thresholds_and_missing_costs_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cost_thresholds: must all be > 0"):
        cdt_eval.Config(cost_thresholds=("10,0",))
    with pytest.raises(ConfigError, match="cost_thresholds: 'ten' is not a number"):
        cdt.Config(cost_thresholds=("ten",))
    with pytest.raises(ConfigError, match="target_returns: give one target or one per threshold"):
        cdt_eval.Config(cost_thresholds=("1,2,3",), target_returns=("5,6",))
    with pytest.raises(DataError, match='carry no "cost"'):
        cdt.train(
            cdt.Config(dataset=("test/cartpole/mixed-v0",), out=tmp_path / "c", steps=2, **SMALL)
        )
