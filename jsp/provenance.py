"""Where a result came from: versions, the code's git commit, the command line and the machine.

Recorded in every saved model (model.json) and in metrics.json's ``final`` entry, so a number
in a table can be traced to the code and settings that produced it.
"""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import jsp

PACKAGE_DIR = Path(jsp.__file__).resolve().parent


def git_commit(folder: Path = PACKAGE_DIR.parent) -> str | None:
    """The commit of a source checkout holding jsp ("+dirty" with uncommitted changes); None for
    an installed wheel or when git is missing."""
    if not (folder / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_name() -> str:
    """The CPU model as the kernel names it (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    import hydra
    import torch

    return {"jsp": jsp.__version__, "torch": torch.__version__, "hydra": hydra.__version__,
            "python": platform.python_version()}


def provenance(overrides: list[str] | None = None) -> dict:
    """Versions, git commit, command line, Hydra overrides and machine (CPU, GPU if one is used)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {**versions(), "git_commit": git_commit(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "overrides": list(overrides or []), "host": platform.node(), "cpu": cpu_name(),
            "threads": torch.get_num_threads(), "gpu": gpu}


def hydra_overrides() -> list[str]:
    """The overrides of the running Hydra job (``[]`` outside Hydra, e.g. a script calling run())."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def version_line(command: str) -> str:
    """``jsp-train 0.1.0 (torch 2.x, hydra 1.3.x, python 3.11.x)``, for --version."""
    v = versions()
    commit = git_commit()
    return (f"{command} {v['jsp']} (torch {v['torch']}, hydra {v['hydra']}, python {v['python']})"
            + (f", git {commit}" if commit else ""))
