"""rlfm dt train / dt eval as a user runs them: outputs, learning (the target sweep), resume,
Discrete actions, multi-task, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from offline_fixtures import cartpole_dataset, speed_run_dataset

from rlfm.cli import main
from rlfm.errors import ConfigError, DataError
from rlfm.stages import dt, dt_eval

SMALL = dict(
    context=5,
    hidden=32,
    layers=2,
    heads=1,
    dropout=0.0,
    batch_size=32,
    lr=1e-3,
    warmup_steps=20,
    eval_episodes=2,
    device="cpu",
    precision="fp32",
)


@pytest.fixture(scope="module")
def minari_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    speed_run_dataset(root, "test/speedrun/mixed-v0", episodes=200)
    cartpole_dataset(root, "test/cartpole/mixed-v0", episodes=30)
    return root


@pytest.fixture(autouse=True)
def _datasets(minari_dir, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_dir))


@pytest.fixture(scope="module")
def trained(minari_dir, tmp_path_factory):
    import os

    os.environ["MINARI_DATASETS_PATH"] = str(minari_dir)
    out = tmp_path_factory.mktemp("dt") / "run"
    cfg = dt.Config(
        dataset=("test/speedrun/mixed-v0",),
        out=out,
        steps=300,
        eval_every=150,
        save_every=150,
        **SMALL,
    )
    return out, dt.train(cfg)


def test_conditioned_dt_reaches_the_returns_it_is_asked_for(trained, tmp_path):
    """Learning: targets spread over the dataset's return range give clearly different
    achieved returns, correlation ≥ 0.9 between target and achieved return."""
    out, _ = trained
    from rlfm.data.trajectories import load_tasks

    R = load_tasks(["test/speedrun/mixed-v0"])[0].returns
    targets = np.linspace(np.percentile(R, 5), np.percentile(R, 95), 5)
    result = dt_eval.evaluate(
        dt_eval.Config(
            model=out,
            target_returns=(",".join(f"{t:.2f}" for t in targets),),
            episodes=4,
            out=tmp_path / "result.json",
            device="cpu",
        )
    )
    rows = result["tasks"][0]["results"]
    achieved = [r["return_mean"] for r in rows]
    corr = np.corrcoef(targets, achieved)[0, 1]
    print("targets", np.round(targets, 1), "achieved", np.round(achieved, 1), "corr", corr)
    assert corr >= 0.9
    assert achieved[-1] - achieved[0] > 0.5 * (targets[-1] - targets[0])


def test_training_writes_its_outputs(trained):
    out, summary = trained
    assert {"loss", "eval_return", "eval_score"} <= set(summary)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] > rows[-1]["loss"]
    assert {"loss", "lr", "grad_norm", "steps_per_s"} <= set(rows[0])
    assert (out / "plots/loss.png").is_file() and (out / "plots/eval_return.png").is_file()
    ckpt = out / "checkpoints/step_300"
    assert (ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()
    model_cfg = json.loads((ckpt / "config.json").read_text())
    assert model_cfg["model_type"] == "decision_transformer" and model_cfg["context"] == 5


def test_eval_result_keys_and_figure(trained, tmp_path):
    out, _ = trained
    result = dt_eval.evaluate(
        dt_eval.Config(
            model=out, target_returns=("20,60",), episodes=2, out=tmp_path / "r.json", device="cpu"
        )
    )
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["tasks"][0]["task"] == "rlfm/SpeedRun-v0"
    rows = saved["tasks"][0]["results"]
    assert [r["target_return"] for r in rows] == [20.0, 60.0]
    for r in rows:
        assert {"target_return", "return_mean", "return_std", "normalised_score"} <= set(r)
    ref = saved["tasks"][0]["normalisation"]
    assert "own min and max" in ref["source"]  # the test dataset stores no ref scores
    R = rows[1]["return_mean"]
    assert rows[1]["normalised_score"] == pytest.approx(
        100 * (R - ref["ref_min"]) / (ref["ref_max"] - ref["ref_min"])
    )
    assert (tmp_path / "r.png").is_file() and result["plot"].endswith("r.png")


def test_resume_continues_to_more_steps(trained, tmp_path):
    """A finished run asked for more steps resumes from its last checkpoint."""
    out, _ = trained
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    cfg = dt.Config(
        dataset=("test/speedrun/mixed-v0",),
        out=copy,
        steps=320,
        eval_every=150,
        save_every=150,
        **SMALL,
    )
    dt.train(cfg)
    steps = [json.loads(x)["step"] for x in (copy / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 320 and steps == sorted(steps)
    assert (copy / "checkpoints/step_320").is_dir()


def test_discrete_actions_and_multi_task(tmp_path):
    """CartPole (Discrete) trains and evaluates; two datasets of different environments with
    Box and Discrete actions are refused in one line."""
    out = tmp_path / "cp"
    small = SMALL | {"eval_episodes": 0}
    dt.train(dt.Config(dataset=("test/cartpole/mixed-v0",), out=out, steps=20, **small))
    r = dt_eval.evaluate(
        dt_eval.Config(
            model=out, target_returns=("100",), episodes=1, out=tmp_path / "cp.json", max_steps=50
        )
    )
    assert r["tasks"][0]["results"][0]["return_mean"] > 0
    with pytest.raises(DataError, match="cannot mix Box and Discrete"):
        dt.train(
            dt.Config(
                dataset=("test/speedrun/mixed-v0", "test/cartpole/mixed-v0"),
                out=tmp_path / "mix",
                steps=2,
                **small,
            )
        )


def test_multi_task_model_is_evaluated_per_task(tmp_path, minari_dir):
    """Two Box environments (SpeedRun and Pendulum, 3-D observations) in one model: a task
    embedding, per-task statistics, one result per task."""
    import gymnasium as gym
    from offline_fixtures import episode_buffer, write_dataset

    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    buffers = []
    for i in range(6):
        o, _ = env.reset(seed=i)
        obs, acts, rews = [o], [], []
        for _ in range(40):
            a = rng.uniform(-2, 2, size=1).astype(np.float32)
            o, r, *_ = env.step(a)
            obs.append(o)
            acts.append(a)
            rews.append(r)
        buffers.append(episode_buffer(i, obs, acts, rews, None, False))
    write_dataset(minari_dir, "test/pendulum/random-v0", buffers, env)
    out = tmp_path / "multi"
    dt.train(
        dt.Config(
            dataset=("test/speedrun/mixed-v0", "test/pendulum/random-v0"),
            out=out,
            steps=10,
            **(SMALL | {"eval_episodes": 0}),
        )
    )
    r = dt_eval.evaluate(
        dt_eval.Config(model=out, episodes=1, out=tmp_path / "m.json", max_steps=20)
    )
    assert [t["task"] for t in r["tasks"]] == ["rlfm/SpeedRun-v0", "Pendulum-v1"]
    assert all(len(t["results"]) == 6 for t in r["tasks"])  # the default sweep


def test_user_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(DataError, match="dataset: give at least one"):
        dt.train(dt.Config(out=tmp_path / "none", **SMALL))
    with pytest.raises(ConfigError, match="target_returns: 'abc' is not a number"):
        dt_eval.Config(target_returns=("10,abc",))
    with pytest.raises(SystemExit) as e:
        main(["dt", "train", "--dataset", "no/such/dataset-v0", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'no/such/dataset-v0'" in err
