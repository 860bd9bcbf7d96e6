"""Ask a running training loop to write a checkpoint and stop (preemption, SLURM's SIGUSR2, time limits, Ctrl-C).

Signal handlers only set a flag. The loop checks it between optimizer steps, and the sampler checks it between
UNet calls inside `abortable()` sections (evaluation, and a single process's training step), which then raise
`RunInterrupted`: a long evaluation or sampling loop stops within one UNet call. The trainer catches that, drops
the unfinished step and writes a checkpoint of the last finished one. A request never interrupts a checkpoint
write.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from rewardtune.errors import RunInterrupted

_STOP = threading.Event()
_REASON: list[str] = []
_ABORTABLE = [0]  # depth of abortable() sections entered


def request_stop(reason: str = "requested") -> None:
    """Checkpoint at the end of the current step and stop (safe to call from a signal handler or a callback)."""
    _REASON[:] = [reason]
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def stop_reason() -> str:
    return _REASON[0] if _REASON else ""


def clear_stop() -> None:
    _STOP.clear()
    _REASON.clear()


@contextlib.contextmanager
def abortable(enabled: bool = True) -> Iterator[None]:
    """Inside this block, `check_abort()` raises RunInterrupted once a stop was requested. The caller must be able
    to drop the work in progress (nothing it changed may be half-done)."""
    if not enabled:
        yield
        return
    _ABORTABLE[0] += 1
    try:
        yield
    finally:
        _ABORTABLE[0] -= 1


def check_abort() -> None:
    """Called between UNet calls: raise RunInterrupted when a stop was requested inside an abortable() section."""
    if _ABORTABLE[0] and _STOP.is_set():
        raise RunInterrupted(f"stopped ({stop_reason() or 'requested'})")


def _handler(sig: int, frame) -> None:
    if sig == signal.SIGINT and stop_requested():
        raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting for the checkpoint
    request_stop(f"signal {signal.Signals(sig).name}")


@contextlib.contextmanager
def plain_signals() -> Iterator[None]:
    """Inside this block, where nothing is written yet (the checks and downloads before a run loads its models),
    Ctrl-C and SIGTERM stop the process at once, as they would without rewardtune: the handlers installed here only
    set a flag, which a download never reads. SIGUSR2 (a coming preemption) keeps its handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig, plain in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) is _handler:
            previous[sig] = signal.signal(sig, plain)
    try:
        yield
    finally:
        restore_signal_handlers(previous)


def install_signal_handlers(signals: tuple[int, ...] = (signal.SIGUSR2, signal.SIGTERM)) -> dict[int, object]:
    """Make these signals request a checkpoint-and-stop (a second SIGINT aborts at once); returns the previous
    handlers, to restore them. Only the main thread can install handlers."""
    previous = {}
    for sig in signals:
        previous[sig] = signal.signal(sig, _handler)
    return previous


def restore_signal_handlers(previous: dict[int, object]) -> None:
    for sig, h in previous.items():
        signal.signal(sig, h)  # type: ignore[arg-type]
