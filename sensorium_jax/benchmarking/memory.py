"""Peak memory of one measurement: GPU bytes from the device's allocator, else the process's resident set.

On Linux the resident-set high-water mark (``VmHWM``) can be reset by writing ``5`` to ``/proc/self/clear_refs``,
so each measurement gets its own peak even when an earlier one in the same process used more; where that is not
possible the process-lifetime high-water mark of ``resource.getrusage`` is used, and the kind says so. Worker
processes (Grain ``mp_prefetch``) are not in either figure, so :class:`TreeRssSampler` sums the resident sets of
the process and its children by sampling.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import threading
from pathlib import Path

import jax

_PROC = Path("/proc")


def _status_kib(field: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (e.g. VmRSS, VmHWM), or None where there is no procfs."""
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int:
    """Current resident set of this process."""
    kib = _status_kib("VmRSS")
    if kib is None:  # no procfs: the high-water mark is the best available figure
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return kib * 1024


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark; False where the kernel does not allow it."""
    try:
        (_PROC / "self" / "clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux
    return kib * 1024


def gpu_peak_bytes() -> int | None:
    """``peak_bytes_in_use`` of the first local accelerator, or None on CPU (where JAX has no memory stats)."""
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return None
    stats = device.memory_stats() or {}
    return stats.get("peak_bytes_in_use")


@dataclasses.dataclass
class PeakMemory:
    """Context manager: peak memory while its body runs.

    ``kind``: ``gpu_peak`` (the allocator's process-lifetime peak: it cannot be reset, so after a larger earlier
    measurement it is that one's), ``rss_delta`` (host peak RSS above the RSS at entry, peak reset at entry) or
    ``rss_delta_lifetime`` (the same against the unresettable process high-water mark: 0 when an earlier
    measurement peaked higher).
    """

    gpu: bool = True
    peak_bytes: int = 0
    kind: str = ""
    _baseline: int = 0

    def __enter__(self) -> PeakMemory:
        self._resettable = reset_peak_rss()
        self._baseline = rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        gpu = gpu_peak_bytes() if self.gpu else None
        if gpu is not None:
            self.peak_bytes, self.kind = int(gpu), "gpu_peak"
        else:
            self.peak_bytes = max(0, peak_rss_bytes() - self._baseline)
            self.kind = "rss_delta" if self._resettable else "rss_delta_lifetime"


def _children(pid: int) -> list[int]:
    out = []
    for task in (_PROC / str(pid) / "task").glob("*"):
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return out


def tree_rss_bytes(pid: int | None = None) -> int:
    """Resident sets of a process and all its descendants, summed (shared pages count once per process)."""
    pid = os.getpid() if pid is None else pid
    total, stack, seen = 0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        kib = _status_kib("VmRSS", current)
        total += (kib or 0) * 1024
        stack.extend(_children(current))
    return total


class TreeRssSampler:
    """Samples :func:`tree_rss_bytes` in a background thread; ``peak_bytes`` is the largest sample."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, tree_rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeRssSampler:
        self.peak_bytes = tree_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, tree_rss_bytes())
