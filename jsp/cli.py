"""Entry points. ``jsp-train`` composes the config from ``conf/`` (found next to this package,
whatever the working directory) and runs the pipeline."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from jsp.errors import JSPError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("jsp")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_main(cfg: DictConfig) -> float:
    """Run one job; returns test mIoU so sweepers can optimise it."""
    from jsp.pipeline import run

    try:
        metrics = run(cfg, HydraConfig.get().runtime.output_dir)
    except JSPError as e:
        if os.environ.get("JSP_DEBUG"):
            raise
        log.error("%s", e)
        sys.exit(2)
    return metrics["final"]["miou"]


if __name__ == "__main__":
    train_main()
