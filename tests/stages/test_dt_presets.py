"""Every preset in configs/dt and configs/cdt parses into its stage's Config and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlfm.config import from_dict, load_yaml
from rlfm.stages import cdt, dt

ROOT = Path(__file__).resolve().parents[2] / "configs"
PRESETS = [(dt, p) for p in sorted((ROOT / "dt").glob("*.yaml"))] + [
    (cdt, p) for p in sorted((ROOT / "cdt").glob("*.yaml"))
]


def test_presets_exist():
    names = {(m.__name__.rsplit(".", 1)[1], p.stem) for m, p in PRESETS}
    assert {("dt", "paper"), ("dt", "cpu"), ("cdt", "paper"), ("cdt", "cpu")} <= names


@pytest.mark.parametrize("module,path", PRESETS, ids=[f"{m.__name__}:{p.stem}" for m, p in PRESETS])
def test_preset_parses_and_validates(module, path):
    cfg = from_dict(module.Config, load_yaml(path), source=str(path))
    assert cfg.steps >= 1 and cfg.hidden % cfg.heads == 0


def test_paper_presets_hold_the_papers_numbers():
    d = from_dict(dt.Config, load_yaml(ROOT / "dt/paper.yaml"))
    assert (d.context, d.hidden, d.layers, d.heads, d.batch_size) == (20, 128, 3, 1, 64)
    assert (d.lr, d.warmup_steps, d.max_grad_norm, d.return_scale) == (1e-4, 10000, 0.25, 1000.0)
    c = from_dict(cdt.Config, load_yaml(ROOT / "cdt/paper.yaml"))
    assert (c.context, c.hidden, c.layers, c.heads, c.batch_size) == (10, 128, 3, 8, 2048)
    assert (c.init_temperature, c.augment_share, c.method) == (0.1, 0.2, "cdt")


def test_cpu_presets_are_the_demos_settings():
    from rlfm.stages import cdt_demo, dt_demo

    assert load_yaml(ROOT / "dt/cpu.yaml") == dt_demo.CPU
    assert load_yaml(ROOT / "cdt/cpu.yaml") == cdt_demo.CPU | {"method": "cdt"}
