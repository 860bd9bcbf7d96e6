"""Memory measurement shared by the tests and the benchmarks."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable


def peak_cpu_tensor_bytes(fn: Callable[[], object]) -> int:
    """Peak of live CPU tensor bytes allocated while `fn` runs, above what was live when it started.

    The CPU analogue of `torch.cuda.max_memory_allocated` over a call: the profiler's memory events carry the
    running total of bytes the CPU allocator handed out since profiling began, so their maximum is the call's
    activation/gradient/temporary peak, independent of glibc's heap retention and of one-time lazy initialisation
    (which blur RSS).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.unlink(path)
    return max((e["args"].get("Total Allocated", 0) for e in events
                if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0), default=0)
