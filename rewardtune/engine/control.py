"""Ask a running training loop to write a checkpoint and stop (preemption, SLURM's SIGUSR2, time limits).

The loop checks the flag between optimizer steps, so a request never interrupts a step or a checkpoint write.
Signal handlers only set the flag.
"""
from __future__ import annotations

import signal
import threading

_STOP = threading.Event()
_REASON: list[str] = []


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


def _handler(sig: int, frame) -> None:
    if sig == signal.SIGINT and stop_requested():
        raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting for the checkpoint
    request_stop(f"signal {signal.Signals(sig).name}")


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
