"""benchmarks/run_all.py: the rows it writes and the RESULTS.md it renders from them, on
hand-made rows (no benchmark runs here, no timings asserted)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def run_all():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_run_all", BENCH / "run_all.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_run_all", None)
        sys.path.remove(str(BENCH))


def _row(**kw) -> dict:
    from_common = {
        "workload": "sft",
        "size": "tiny",
        "peer": "TRL 1.12.0",
        "peer_settings": "SFTTrainer, gradient_checkpointing=False | group_by_length",
        "metric": "samples/s",
        "rlfm": 200.0,
        "peer_value": 100.0,
        "ratio": 2.0,
        "target": "≥ 2×",
        "met": True,
        "kind": "like-for-like",
        "rlfm_rounds": [190.0, 210.0],
        "peer_rounds": [95.0, 105.0],
        "job": "sft@tiny",
        "load": {"before": 1.5, "after": 2.25, "others_cpu_share": 0.3},
    }
    return from_common | kw


def test_result_row_has_the_required_keys(run_all):
    from _common import memory_row, result_row

    row = result_row(
        workload="reward (pairs)",
        size="tiny",
        peer="TRL",
        peer_settings="x",
        metric="comparisons/s",
        rlfm=[3.0, 5.0],
        peer_value=[2.0, 2.0],
        target=2.0,
    )
    run_all.check_row(row)
    assert set(run_all.REQUIRED_KEYS) <= set(row)
    assert row["ratio"] == pytest.approx(2.0) and row["met"] is True
    side = [{"peak_mib": 90.0}], [{"peak_mib": 100.0}]
    mem = memory_row(*side, workload="ppo", size="tiny", peer="TRL", peer_settings="x", target=0.8)
    assert mem["met"] is False and mem["target"] == "≤ 0.8×"  # 0.9× is above the ceiling
    run_all.check_row(mem)


def test_render_one_table_with_every_row(run_all):
    rows = [
        _row(),
        _row(
            workload="reward (k4)",
            metric="comparisons/s",
            ratio=3.0,
            met=False,
            target="≥ 4×",
            note="profile: the forward pass | 60%",
        ),
        run_all.failed_row(run_all.JOBS[0], "timed out after 900 s; output:\nlast line"),
    ]
    meta = {"runs": [{"command": "python benchmarks/run_all.py --out x.json", "date": "d",
                      "machine": {"cpu": "CPU", "cores": 2, "torch": "2.x",
                                  "matmul_peak": {"float32": 4e11, "bfloat16": 8e11},
                                  "load": 1.0}}]}  # fmt: skip
    text = run_all.render_markdown(rows, meta)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)  # header, rule, one line per row
    cells = [len(re.findall(r"(?<!\\)\|", line)) for line in table]  # unescaped pipes
    assert cells == [cells[0]] * len(table)
    assert "2.00×" in table[2] and "200 [190–210]" in table[2] and "yes" in table[2]
    assert "1.5 → 2.2" in table[2] and "30% others" in table[2]
    assert "**no**" in table[3] and "[1]" in table[3]
    assert "—" in table[4]
    assert "400 GFLOP/s" in text and "800 GFLOP/s" in text
    assert "timed out after 900 s" in text


def test_rows_from_output_and_merge(run_all, tmp_path):
    job = run_all.JOBS[0]
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"rows": [_row()], "details": {"k": 1}}))
    rows, details = run_all.rows_from_output(job, out, "tail")
    assert rows == [_row()] and details == {"k": 1}
    out.write_text(json.dumps([{"workload": "dt"}]))  # a row without the keys
    (bad,), _ = run_all.rows_from_output(job, out, "tail")
    run_all.check_row(bad)
    assert bad["rlfm"] is None and "required keys" in bad["note"]
    (missing,), _ = run_all.rows_from_output(job, tmp_path / "none.json", "the stdout")
    assert "the stdout" in missing["note"]

    old = [_row(job="sft@tiny", rlfm=1.0), _row(job="ppo@tiny", workload="ppo (full)")]
    merged = run_all.merge_rows(old, [_row(job="sft@tiny", rlfm=2.0)], {"sft@tiny"})
    assert [(r["job"], r["rlfm"]) for r in merged] == [("sft@tiny", 2.0), ("ppo@tiny", 200.0)]


def test_a_failed_run_keeps_the_job_s_last_measured_rows(run_all):
    job = run_all.JOBS[0]
    old = [_row(job=job.name, rlfm=1.0), _row(job=job.name, rlfm=3.0, metric="peak MiB")]
    crash = run_all.failed_row(job, "exit status 1 after 794 s; output:\nOSError") | {
        "job": job.name
    }
    merged = run_all.merge_rows(old, [crash], {job.name})
    assert [r["rlfm"] for r in merged] == [1.0, 3.0, None]  # the measurement, then the failure
    assert "exit status 1" in merged[2]["note"] and "last measured run" in merged[2]["note"]
    # a failure on a failure: only the newest failure row
    (again,) = run_all.merge_rows([crash], [crash], {job.name})
    assert again["failed"] and "last measured run" not in again["note"]
    # a run that measures replaces the rows and the old failure
    fresh = _row(job=job.name, rlfm=2.0)
    assert run_all.merge_rows(merged, [fresh], {job.name}) == [fresh]
    # other jobs' rows are untouched
    other = _row(job="ppo@tiny", workload="ppo (full)")
    assert other in run_all.merge_rows([*old, other], [crash], {job.name})


def test_cli_choices(run_all):
    a = run_all.parse_args(["--out", "x.json", "--only", "sft,reward", "--sizes", "tiny,100m"])
    assert a.only == ["sft", "reward"] and a.sizes == ["tiny", "100m"]
    assert a.precision is None  # bf16 where the CPU has bf16 units, else fp32
    jobs = run_all.select_jobs(a.only, a.sizes, "bf16")
    assert [j.name for j in jobs] == ["sft@tiny", "sft@100m", "reward@tiny", "reward@100m"]
    assert all(j.args[-2:] == ("--precision", "bf16") for j in jobs)
    a = run_all.parse_args(["--out", "x.json", "--only", "sft,ppo", "--sizes", "tiny"] +
                           ["--precision", "fp32"])  # fmt: skip
    sft, ppo = run_all.select_jobs(a.only, a.sizes, a.precision)
    assert (sft.name, sft.args[-2:]) == ("sft@tiny/fp32", ("--precision", "fp32"))
    assert ppo.name == "ppo@tiny" and "--precision" not in ppo.args  # PPO is fp32 on both sides
    # fp32 rows join the bf16 rows of the same workload and size instead of replacing them
    bf16 = _row(job="sft@tiny", rlfm=1.0)
    merged = run_all.merge_rows([bf16], [_row(job=sft.name, rlfm=2.0)], {sft.name})
    assert [(r["job"], r["rlfm"]) for r in merged] == [("sft@tiny", 1.0), ("sft@tiny/fp32", 2.0)]
    with pytest.raises(SystemExit):
        run_all.parse_args(["--out", "x.json", "--only", "nope"])
