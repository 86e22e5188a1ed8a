"""Run one ``rlfm`` command in this process, timed and measured the way every benchmark times
and measures its peer (``_common.StepStamps``, ``_common.MemoryAboveImports``).

    python benchmarks/_stamped.py RESULT.json WARMUP WORK_PER_STEP MODULE [MODULE ...] -- ARGS

imports the MODULEs (the stage and what it loads: the baseline memory is read after them), then
runs ``rlfm ARGS`` exactly as the command line would, and writes {"rate": work per second over
the optimizer steps after WARMUP, "steps", "peak_mib": peak RSS above the RSS after imports}.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MemoryAboveImports, StepStamps  # noqa: E402


def main() -> None:
    sep = sys.argv.index("--")
    result, warmup, work, *modules = sys.argv[1:sep]
    for m in modules:
        importlib.import_module(m)
    from rlfm.cli import main as rlfm_main
    from rlfm.tracking import quiet_libraries

    quiet_libraries()
    memory = MemoryAboveImports()
    stamps = StepStamps()
    rlfm_main(sys.argv[sep + 1 :])
    steps, seconds = stamps.seconds(int(warmup))
    Path(result).write_text(
        json.dumps(
            {
                "rate": steps * float(work) / seconds,
                "steps": len(stamps.ends),
                "step_s": [b - a for a, b in zip(stamps.ends, stamps.ends[1:])],
                "peak_mib": memory.peak(),
            }
        )
    )


if __name__ == "__main__":
    main()
