"""Prepare a batch's pages on several threads, where the batch is prepared with cores to spare.

A collator in the training process (no DataLoader workers: ``train`` and ``eval`` start none
on a CPU-only machine) decodes and resizes a batch's pages on one thread while the model's
step waits for them and the other cores idle. PNG decoding (Pillow) and the image processor's
resize and normalise (torch) release the GIL, so the pages can be split among threads: on the
bench's 2 cores a batch of 8 distinct 612 x 792 pages took 64-67 ms on two threads against
82-91 ms on one (bench/RESULTS.md). A worker process keeps one thread: its siblings use the
other cores.

The threads live in one pool per process, started on first use (a pool does not survive a
fork, so a DataLoader worker that is handed a collator starts its own), each with one torch
intra-op thread: a second OpenMP team per thread would only fight the others for the cores.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_POOL_LOCK = threading.Lock()
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, pool)


def page_threads(device: Any, num_workers: int) -> int:
    """The threads a collator in this process may prepare a batch's pages on.

    One in a DataLoader worker (``num_workers > 0``: the workers share the cores). Without
    workers, where no prefetch thread runs (``prefetch.a_core_is_spare`` false: torch's threads
    take every core), the batch is prepared between steps, when every core of this rank is idle.
    With the prefetch thread, the batch is prepared while the step runs: on an accelerator the
    host thread launching the step keeps a core; on the CPU only the cores torch leaves are used.
    """
    import torch

    from florence_patch.training.config import ranks_on_this_machine, usable_cores
    from florence_patch.training.prefetch import a_core_is_spare

    if num_workers > 0:
        return 1
    cores = max(1, usable_cores() // ranks_on_this_machine())
    if not a_core_is_spare(device):
        return cores
    if torch.device(device).type == "cpu":
        return max(1, cores - torch.get_num_threads())
    return max(1, cores - 1)


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # this thread's OpenMP setting only


def _pool(threads: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < threads:
            if _POOL is not None and _POOL[0] == os.getpid():
                _POOL[2].shutdown(wait=False)
            _POOL = (
                os.getpid(),
                threads,
                ThreadPoolExecutor(threads, thread_name_prefix="florence-patch-pages", initializer=_one_torch_thread),
            )
        return _POOL[2]


def map_in_chunks(
    function: Callable[[Sequence[Item]], Result], items: Sequence[Item], threads: int
) -> list[Result]:
    """``function`` over ``items`` cut into at most ``threads`` consecutive chunks of near-equal
    size, one chunk a thread, results in the chunks' order; one call on this thread when there
    is one chunk. An exception in any chunk is raised here."""
    chunks = min(max(1, threads), len(items))
    if chunks <= 1:
        return [function(items)]
    size, extra = divmod(len(items), chunks)
    bounds = [0]
    for chunk in range(chunks):
        bounds.append(bounds[-1] + size + (chunk < extra))
    parts = [items[start:end] for start, end in zip(bounds, bounds[1:])]
    return list(_pool(chunks).map(function, parts))


__all__ = ["map_in_chunks", "page_threads"]
