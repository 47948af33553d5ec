"""Keep freed tensor memory in a CPU training or evaluation process (Linux, glibc).

PyTorch's CPU tensors come from ``malloc``. glibc hands blocks above its mmap threshold out as
fresh mappings and returns them to the system when freed, and trims the top of its heap whenever
more than the trim threshold lies free there; both thresholds move with what the process
happened to allocate before. A training step frees and allocates the same activations every
step, so how many of them are faulted in page by page again (zeroed by the kernel) depends on the
process's history: on this repository's 2-core CPU two processes of the same loop differed by up
to 5 % a step, and forcing every block over 64 KiB through mmap made a step twice as long
(bench/RESULTS.md). Fixing the thresholds at their largest (mmap at 32 MiB, the most glibc
accepts on 64-bit; no trimming below 1 GiB) keeps the freed blocks for the next step, as
jemalloc and tcmalloc do; the cost is a resident size that stays at the step's peak.

Nothing changes where the user already chose: any ``MALLOC_*`` variable, a malloc tunable in
``GLIBC_TUNABLES``, or another allocator in ``LD_PRELOAD``. GPU processes are left alone (their
activations live in the device's caching allocator).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

logger = logging.getLogger(__name__)

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024
PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def allocator_choice_of_user(environ=None) -> str | None:
    """What in the environment already decides how ``malloc`` behaves, or None."""
    environ = os.environ if environ is None else environ
    for name in sorted(environ):
        if name.startswith("MALLOC_"):
            return name
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = environ.get("LD_PRELOAD", "")
    if any(allocator in preload for allocator in PRELOADED_ALLOCATORS):
        return "LD_PRELOAD"
    return None


def on_glibc() -> bool:
    """Whether this process's ``malloc`` is glibc's on Linux (the only one these settings are for)."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (see the module's docstring).

    Returns whether they were set: False off Linux/glibc, when the user's environment already
    decides, or when ``mallopt`` refuses.
    """
    if not on_glibc():
        return False
    chosen = allocator_choice_of_user()
    if chosen is not None:
        logger.info("host memory: %s is set, so malloc is left as configured", chosen)
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success, 0 when it refuses the value.
    if not (libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)):
        logger.info("host memory: glibc refused the malloc thresholds; left as they are")
        return False
    logger.info(
        "host memory: freed tensor memory stays in the process (malloc: mmap threshold %d MiB, trim threshold %d MiB)",
        MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20,
    )
    return True
