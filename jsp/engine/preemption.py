"""Stopping cleanly when the scheduler asks: SIGTERM (a preemption, ``kill``), SIGUSR1 (Slurm's
warning signal with ``--signal``) and SIGUSR2 (submitit's).

The handler only records the signal; the training loop looks at ``requested()`` at each step
boundary, writes ``last.pt`` (marked ``preempted``) and raises ``Preempted``. The entry point
then hands the signal on to whatever handler was installed before ours (submitit's, which
requeues the job) or exits with ``EXIT_PREEMPTED``. A run dir whose ``last.pt`` is marked
preempted is resumed by the next job started on it (``resume=auto``, the default), so a
requeued job continues where the preempted one stopped.
"""
from __future__ import annotations

import os
import signal
import threading

from jsp.engine import distributed
from jsp.errors import JSPError

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"
SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGUSR1", "SIGUSR2")) if s is not None)
_received: list[int] = []
_previous: dict[int, object] = {}
_agreed: list[str] = []


class Preempted(JSPError):
    """The job was asked to stop; its state is saved and ``resume`` continues it."""


def _record(signum, frame) -> None:
    _received.append(signum)


def install() -> None:
    """Catch the stop signals (main thread only; elsewhere, e.g. in a Ray worker, do nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _received.clear()
    _agreed.clear()
    for sig in SIGNALS:
        previous = signal.signal(sig, _record)
        if previous is not _record:
            _previous[sig] = previous


def requested() -> str | None:
    """The name of the first stop signal received, or None."""
    return signal.Signals(_received[0]).name if _received else None


def agreed() -> str | None:
    """Whether to stop here: the first stop signal received, agreed by every rank of a
    distributed run (a signal to any rank stops all of them at the same step boundary).
    Called at the same points on every rank; once true it stays true."""
    if not _agreed:
        mine = requested()
        if distributed.any_rank(mine is not None):
            _agreed.append(mine or "a stop signal to another rank")
    return _agreed[0] if _agreed else None


def hand_on() -> None:
    """Give the signal to the handler that was there before ours (submitit: checkpoint and requeue).

    submitit ignores SIGTERM and requeues on its own signal (SIGUSR2, or $SUBMITIT_PREEMPT_SIGNAL),
    so a SIGTERM is handed to that handler when one is installed.
    """
    if not _received:
        return
    sig = _received[0]
    own = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    for candidate in (sig, own):
        handler = _previous.get(candidate)
        if callable(handler) and getattr(handler, "__name__", "") != "bypass":
            handler(candidate, None)
            return
