"""Share one trained dense stage between the runs that would train it identically.

A method comparison trains the same dense network many times: `dense`, `l1_norm`,
`correlation` and `random` all train without a constraint, and every budget of one method
trains the same constrained network. With ``dense_cache=DIR`` the first run to need a dense
stage trains it and stores it under DIR/KEY; the others copy it. The key hashes everything the
dense stage depends on (dataset, model, constraint and trainer settings, seed, device type)
and the source of the jsp package, so a cached network never outlives the code that trained
it. Besides saving time this makes the comparison fairer: on a GPU, where training is not
bit-for-bit repeatable, every pruning criterion then starts from the very same weights.

Concurrent jobs (the joblib launcher) take a lock per key: the second waits for the first
instead of training the same network again. The lock is an ``fcntl`` lock; on a filesystem
without one, both train and the later copy wins (correct, just not faster).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from pathlib import Path

import jsp

# What the dense stage does not depend on: where it logs and how often, and how it reports.
IGNORED_TRAINER_KEYS = ("log_every", "progress_every", "checkpoint_every", "eval_examples", "latency_s", "num_workers")


def _source_hash() -> str:
    h = hashlib.sha256()
    for f in sorted(Path(jsp.__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()


def dense_key(parts: dict) -> str:
    """A short hash of the dense stage's inputs (plain JSON-able ``parts``) and of jsp's code."""
    blob = json.dumps({"inputs": parts, "code": _source_hash()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@contextlib.contextmanager
def claim(cache_dir: str | Path, key: str):
    """Hold the lock of entry ``key``; yields the entry's folder (which may not exist yet)."""
    root = Path(cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield root / key
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fetch(entry: Path, stage_folder: Path) -> dict | None:
    """Copy a cached dense model into ``stage_folder``; returns its metrics, or None if not cached."""
    if not (entry / "metrics.json").is_file():
        return None
    if stage_folder.exists():
        shutil.rmtree(stage_folder)
    shutil.copytree(entry / "model", stage_folder)
    return json.loads((entry / "metrics.json").read_text())


def store(entry: Path, stage_folder: Path, metrics: dict, run_dir: Path) -> None:
    """Put a freshly trained dense stage into the cache (atomically: a half-written entry is never read)."""
    tmp = entry.with_name(entry.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(stage_folder, tmp / "model")
    (tmp / "metrics.json").write_text(json.dumps({**metrics, "trained_in": str(run_dir)}, indent=2, default=float))
    if entry.exists():
        shutil.rmtree(entry)
    tmp.rename(entry)
