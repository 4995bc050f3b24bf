"""Writing run outputs safely: atomic replacement, clear errors for full or read-only disks,
and a lock that keeps two jobs out of one run dir.

Every file a later step reads back (checkpoints, saved models) is written to ``NAME.tmp`` and
renamed over ``NAME``: a full disk or a kill mid-write leaves the previous ``NAME`` intact.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from jsp.errors import JSPError

LOCK_NAME = ".jsp.lock"
log = logging.getLogger("jsp")


class WriteError(JSPError):
    """A run output could not be written (disk full, no permission, read-only filesystem)."""


def _reason(e: OSError) -> str:
    hints = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
             errno.EACCES: "permission denied", errno.EPERM: "permission denied",
             errno.EROFS: "the filesystem is read-only"}
    return hints.get(e.errno, e.strerror or type(e).__name__)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then rename tmp over ``path``; on failure the old ``path`` is kept."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        kept = " (the previous version is kept)" if path.exists() else ""
        raise WriteError(f"cannot write {path}: {_reason(e)}{kept}. Free space or fix permissions, "
                         "then rerun with resume=true") from None
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_safetensors(path: str | Path, state: dict) -> Path:
    from safetensors.torch import save_file

    return write_atomic(path, lambda tmp: save_file(state, str(tmp)))


def probe_writable(folder: Path) -> None:
    """Create and remove a file in ``folder`` (created): fails before any work if outputs cannot be written."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise WriteError(f"cannot write to the run dir {folder}: {_reason(e)}. Choose a writable "
                         "hydra.run.dir (or hydra.sweep.dir)") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``RUN/.jsp.lock`` holding the owner's pid and host; a second job on the run dir is refused.

    A lock left by a dead process on this host (a killed job) is taken over; a lock from
    another host cannot be checked and is refused with the way to clear it.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def __enter__(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise JSPError(f"cannot take the run-dir lock {self.path}")

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            owner, pid, host = {}, -1, socket.gethostname()  # unreadable: a crash mid-write
        if host == socket.gethostname() and (pid <= 0 or not _alive(pid)):
            log.warning("run dir lock %s was left by process %s, which is gone; taking it over",
                                             self.path, pid)
            self.path.unlink(missing_ok=True)
            return
        raise JSPError(f"run dir {self.path.parent} is in use by process {pid} on {host} since "
                       f"{owner.get('since', '?')}; wait for it, pick another hydra.run.dir, or delete {self.path} "
                       "if that job is gone")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
