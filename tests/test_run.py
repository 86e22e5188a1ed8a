"""Run directories a user can trust: each fault reproduced first, then the behaviour checked.

Changed settings on resume, two writers, another stage's run, SIGINT/SIGTERM, damaged
checkpoints, OS faults, finished runs, mismatched models and tokenizers."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from rlfm import checkpoint
from rlfm.checkpoint import checkpoints, latest_checkpoint, verify
from rlfm.cli import main
from rlfm.errors import ConfigError, ModelError, RunError
from rlfm.stages import pretrain
from tests.helpers import assert_same_run, flags, rlfm, start, wait_until

ARGS = dict(
    model="tiny",
    vocab_size=400,
    context=32,
    batch_size=8,
    steps=40,
    warmup_steps=5,
    lr=3e-3,
    eval_every=20,
    save_every=10,
    log_every=5,
    eval_batches=2,
    samples=1,
    max_new_tokens=6,
    precision="fp32",
    device="cpu",
)


def cfg(out, corpus_file, **kw) -> pretrain.Config:
    return pretrain.Config(out=out, data=corpus_file, **(ARGS | kw))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus_file):
    """A finished 40-step pre-training run (checkpoints at 20, 30, 40)."""
    out = tmp_path_factory.mktemp("run") / "ref"
    pretrain.train(cfg(out, corpus_file))
    return out


def cli(capsys, *args: str) -> str:
    """Run the rlfm command in this process; it must fail as a user error (status 2) with one
    line and no traceback. Returns what it printed on stderr."""
    capsys.readouterr()  # what the test printed before
    with pytest.raises(SystemExit) as e:
        main([*args, "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    return err


def copy_run(src, dst):
    shutil.copytree(src, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


# ---------------------------------------------------------------------------- settings


def test_changed_settings_on_resume_are_refused_naming_each(finished, corpus_file, tmp_path):
    """Resuming with another --lr and --model stops before any work and names both changes
    (old → new); config.yaml still says what ran. More --steps are allowed and logged."""
    out = copy_run(finished, tmp_path / "run")
    before = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError) as e:
        pretrain.train(cfg(out, corpus_file, lr=0.05, model="small", steps=60))
    assert "lr: 0.003 → 0.05" in str(e.value) and "model: 'tiny' → 'small'" in str(e.value)
    assert (out / "config.yaml").read_text() == before
    assert [c.name for c in checkpoints(out)][-1] == "step_40"
    pretrain.train(cfg(out, corpus_file, steps=50, eval_every=25))
    assert "steps: 50" in (out / "config.yaml").read_text()
    assert checkpoints(out)[-1].name == "step_50"


def test_a_finished_run_says_so_and_writes_nothing(finished, corpus_file, tmp_path, capfd):
    """The same command on a finished run prints "already finished at step 40" and changes no
    file (no second samples row, no metrics row)."""
    out = copy_run(finished, tmp_path / "run")
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    summary = pretrain.train(cfg(out, corpus_file))
    assert "already finished at step 40" in capfd.readouterr().err
    assert summary == json.loads((out / "summary.json").read_text())["metrics"]
    assert {p: p.read_bytes() for p in files} == files


def test_another_stages_run_is_refused(finished, tmp_path, capsys):
    """`rlfm sft --out <a pretrain run>` stops naming the owner, and leaves the run as it was —
    also for a run older than run.json (recognised by its config's fields)."""
    out = copy_run(finished, tmp_path / "run")
    before = (out / "config.yaml").read_text()
    assert "holds a `rlfm pretrain` run" in cli(
        capsys, "sft", "--model", str(finished), "--out", str(out)
    )
    (out / "run.json").unlink()
    assert "another stage's run" in cli(capsys, "sft", "--model", str(finished), "--out", str(out))
    assert (out / "config.yaml").read_text() == before


# ---------------------------------------------------------------------------- one writer


def test_a_second_writer_exits_naming_the_holder_and_a_stale_lock_is_taken_over(
    corpus_file, tmp_path
):
    """While one run writes a directory, a second command on it exits at once naming the
    first's PID and touches nothing; after the first is SIGKILLed, the next run takes the
    lock over and resumes."""
    out = tmp_path / "run"
    args = ["pretrain", "--out", str(out), "--data", str(corpus_file)]
    args += flags(**(ARGS | {"steps": 400, "save_every": 20}))
    first = start(*args)
    wait_until(first, lambda: bool(checkpoints(out)))
    metrics = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(RunError, match=f"in use by another rlfm process \\(PID {first.pid}\\)"):
        pretrain.train(cfg(out, corpus_file, steps=400, save_every=20))
    assert first.poll() is None
    assert (out / "metrics.jsonl").read_bytes().startswith(metrics)
    first.send_signal(signal.SIGKILL)
    first.wait()
    resumed_from = checkpoints(out)[-1].name
    pretrain.train(cfg(out, corpus_file, steps=int(resumed_from.split("_")[1]) + 10, save_every=20))


# ---------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_current_step_and_the_run_resumes_to_the_same_end(
    finished, corpus_file, tmp_path, sig
):
    """SIGTERM (a cluster's preemption) or Ctrl-C mid-run: the step in progress finishes, a
    checkpoint of it is written (no save was due: save_every is 1000), the exit status is
    143 / 130 naming that step; the same command then ends exactly as an uninterrupted run."""
    out = tmp_path / "run"
    args = ["pretrain", "--out", str(out), "--data", str(corpus_file)]
    args += flags(**(ARGS | {"save_every": 1000}))
    proc = start(*args)
    wait_until(
        proc,
        lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0,
    )
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    (saved,) = checkpoints(out)
    step = int(saved.name.split("_")[1])
    assert 5 <= step < 40 and f"after step {step}" in err and verify(saved) is None, err
    r = rlfm(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_run(finished, out, ("loss", "val_loss"))


def test_a_second_ctrl_c_stops_at_once_without_damage(corpus_file, tmp_path):
    """Two Ctrl-C in a row: exit 130 at once; every checkpoint on disk is intact."""
    out = tmp_path / "run"
    args = ["pretrain", "--out", str(out), "--data", str(corpus_file)]
    args += flags(**(ARGS | {"steps": 4000, "save_every": 5}))
    proc = start(*args)
    wait_until(proc, lambda: bool(checkpoints(out)))
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert checkpoints(out) and all(verify(c) is None for c in checkpoints(out))


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("damaged", ["model.safetensors", "trainer_state.pt"])
def test_a_damaged_newest_checkpoint_is_skipped(finished, corpus_file, tmp_path, damaged):
    """A truncated file in the newest checkpoint (step 40): a warning names it, the run resumes
    from step 30 and ends as the uninterrupted run did."""
    out = copy_run(finished, tmp_path / "run")
    (out / "summary.json").unlink()
    newest = checkpoints(out)[-1]
    path = newest / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "bytes" in verify(newest)
    with pytest.warns(UserWarning, match=f"step_40 is damaged.*{damaged}"):
        pretrain.train(cfg(out, corpus_file))
    assert verify(checkpoints(out)[-1]) is None
    assert_same_run(finished, out, ("loss", "val_loss"))


def test_a_checkpoint_without_manifest_is_checked_by_loading(finished, tmp_path):
    """A checkpoint written before manifests existed is accepted when its state loads, and
    skipped when it does not."""
    out = copy_run(finished, tmp_path / "run")
    for c in checkpoints(out):
        (c / "manifest.json").unlink()
    assert latest_checkpoint(out).name == "step_40"
    state = checkpoints(out)[-1] / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.warns(UserWarning, match="cannot be read"):
        assert latest_checkpoint(out).name == "step_30"


def test_a_checkpoint_whose_optimizer_does_not_fit_is_refused_naming_it(
    finished, corpus_file, tmp_path
):
    """A checkpoint whose optimizer has other parameter groups than this version builds (as
    when PPO's optimizer changed from one group to two) stops the resume with the checkpoint and
    the part named, and leaves the checkpoint as it was."""
    out = copy_run(finished, tmp_path / "run")
    (out / "summary.json").unlink()
    for c in checkpoints(out):
        (c / "manifest.json").unlink()
    path = checkpoints(out)[-1] / "trainer_state.pt"
    state = torch.load(path, weights_only=False)
    groups = state["optimizer"]["param_groups"]
    groups[0]["params"] += groups.pop()["params"]
    torch.save(state, path)
    before = path.read_bytes()
    with pytest.raises(RunError, match="step_40: its optimizer state does not fit this run"):
        pretrain.train(cfg(out, corpus_file))
    assert path.read_bytes() == before


def test_a_full_disk_while_saving_names_the_path_and_keeps_the_last_checkpoint(
    finished, corpus_file, tmp_path, monkeypatch
):
    """ENOSPC while writing a checkpoint: one error naming the checkpoint, "no space left" and
    the newest intact checkpoint; no partial directory is left."""
    out = copy_run(finished, tmp_path / "run")
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if str(f).endswith("trainer_state.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(RunError) as e:
        pretrain.train(cfg(out, corpus_file, steps=50, eval_every=25))
    msg = str(e.value)
    assert "step_50" in msg and "no space left" in msg and "step_40" in msg, msg
    assert [c.name for c in checkpoints(out)][-1] == "step_40"
    assert not list((out / "checkpoints").glob(".tmp-*"))


# ---------------------------------------------------------------------------- OS faults


def test_out_that_is_a_file_is_one_line(corpus_file, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("notes")
    assert "is a file" in cli(capsys, "pretrain", "--out", str(target), "--data", str(corpus_file))
    assert target.read_text() == "notes"


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_a_read_only_parent_is_one_line_before_any_work(corpus_file):
    """An --out under a directory the user cannot write: one line naming the path and
    "permission denied", before the corpus is read (as an unprivileged user: root may write
    anywhere)."""
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="rlfm-ro-"))  # pytest's own folders are root-only
    os.chmod(tmp_path, 0o755)
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o555)
    data = tmp_path / "corpus.txt"
    shutil.copy(corpus_file, data)
    os.chmod(data, 0o644)
    cmd = ["pretrain", "--out", str(parent / "run"), "--data", str(data), "--device", "cpu"]
    if os.geteuid() == 0:
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        probe = subprocess.run(
            [*nobody, os.sys.executable, "-c", "import rlfm"], capture_output=True, timeout=60
        )
        if probe.returncode != 0:  # e.g. a checkout inside `mktemp -d`'s 0700 folder
            pytest.skip(f"an unprivileged user cannot import rlfm from {os.sys.executable}")
        r = subprocess.run(
            [*nobody, os.sys.executable, "-m", "rlfm", *cmd],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, HOME=str(tmp_path), RLFM_OFFLINE="1"),
        )
    else:
        r = rlfm(*cmd)
    assert r.returncode == 2, r.stderr
    assert "permission denied" in r.stderr and str(parent) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    shutil.rmtree(tmp_path)


# ---------------------------------------------------------------------------- mismatches


def test_a_reward_model_is_not_a_policy(finished, tmp_path, capsys):
    """`rlfm sample` and `rlfm ppo` refuse a reward model directory as the policy."""
    from rlfm.models.heads import RewardModel

    rm = tmp_path / "rm"
    RewardModel.from_backbone(latest_checkpoint(finished), seed=0).save_pretrained(rm)
    assert "is a reward or value model" in cli(capsys, "sample", "--model", str(rm))
    err = cli(capsys, "ppo", "--policy", str(rm), "--reward", str(rm), "--out", str(tmp_path / "p"))
    assert "is a reward or value model" in err and not (tmp_path / "p").exists()


def test_a_tokenizer_larger_than_the_vocabulary_is_an_error(finished, corpus_file, tmp_path):
    """A model directory whose tokenizer has more tokens than the model's embeddings: a clear
    error in `rlfm sample` (it was an IndexError), unless resizing is asked for in pretrain."""
    from rlfm.models.tokenizer import load_tokenizer

    model_dir = tmp_path / "model"
    shutil.copytree(latest_checkpoint(finished), model_dir)
    tok = load_tokenizer(model_dir)
    tok.add_tokens([f"extra{i}" for i in range(20)])
    tok.save_pretrained(model_dir)
    r = rlfm("sample", "--model", str(model_dir), "--prompt", "romeo", "--device", "cpu")
    assert r.returncode == 2 and f"tokenizer has {len(tok)} tokens" in r.stderr, r.stderr
    args = {k: v for k, v in ARGS.items() if k != "vocab_size"} | {"model": str(model_dir)}
    with pytest.raises(ModelError, match="--resize-embeddings"):
        pretrain.train(pretrain.Config(out=tmp_path / "a", data=corpus_file, **args))
    pretrain.train(
        pretrain.Config(
            out=tmp_path / "b", data=corpus_file, resize_embeddings=True, **(args | {"steps": 2})
        )
    )


def test_a_long_prompt_is_cut_from_the_left_with_a_warning(finished):
    """A prompt longer than the context leaves room for --max-new-tokens: it is cut from the
    left, the warning counts it, and the response is not an echo of the prompt."""
    prompt = " ".join(["romeo greets juliet ."] * 40)  # ≫ 32 positions
    r = rlfm(
        "sample",
        "--model",
        str(finished),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
        "--jsonl",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    assert "1 of 1 prompts are longer than the 24 tokens" in r.stderr
    row = json.loads(r.stdout)
    assert row["prompt"] == prompt and 0 < len(row["sample"].split()) <= 8
