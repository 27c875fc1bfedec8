"""Section `kept_memory` (always last: it cannot be undone): PAMR and end to end again after glibc's malloc was
told to keep all freed memory (`mallopt`: no mmap for large blocks, no trimming), the best case for the baseline,
whose large temporaries are otherwise page-faulted in again on every call."""

from __future__ import annotations

import sys

from bench import e2e, pamr
from bench.common import Context, SectionResult, Target

NOTE = "malloc keeps freed memory"


def keep_freed_memory() -> bool:
    """Serve every block from malloc's heap and never give freed memory back to the system. Returns False where
    this is not possible (not glibc). Irreversible for this process."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def run(context: Context) -> SectionResult:
    if not keep_freed_memory():
        return SectionResult(settings={"kept memory": "skipped: this C library has no mallopt"})
    pamr_row = pamr.measure(context, key="pamr_kept_memory", note=NOTE)
    end_to_end_row = e2e.measure(context, key="end_to_end_kept_memory", note=NOTE)
    return SectionResult(
        rows=[pamr_row, end_to_end_row],
        targets=[
            Target(f"end to end vs baseline, {NOTE}", end_to_end_row.speedup, e2e.SPEEDUP_TARGET),
            Target(f"PAMR time vs baseline, {NOTE}", pamr_row.speedup, pamr.SPEEDUP_TARGET),
        ],
    )
