"""What every benchmark script ends with: stamp the report with the machine and date, write it
as JSON, say where. (Imported as a sibling module: run the scripts as ``python scripts/NAME.py``.)"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch


def write_report(report: dict, out: str | Path) -> None:
    """Add ``date`` and ``machine`` to ``report`` and write it to ``out`` (folders created)."""
    report.update(date=time.strftime("%Y-%m-%d"),
                  machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"torch {torch.__version__}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
