"""Prepare the next batches on a background thread when there are no DataLoader workers.

On a CPU-only machine the model's own threads want every core, so `train` and `eval` start no
worker processes there (see ``resolve_num_workers``); preparing a batch (decoding the pages, the
processor's resize and normalise, tokenising) would then run between steps. A thread can do it
meanwhile, in the cores' idle moments: most of that work is in PIL and torch kernels that release
the GIL. The thread runs at the lowest CPU priority with one torch thread, so it never takes a
core the step wants. What that buys depends on how busy the step keeps the cores: on the bench's
2 cores, where the step keeps both busy, almost nothing (the batch is then prepared while the step
waits, as without the thread); with more cores than torch threads, or with a GPU and
``--num-workers 0``, the batch is ready when the step asks. See bench/RESULTS.md.

torchdata's ``nodes.Prefetcher`` does the same inside its own node graph; the Trainer and
accelerate want a ``DataLoader``, so this keeps the DataLoader and threads only its iteration.
Sampling stays where it was (accelerate's seeded sampler has its own generator), so batches and
their order are exactly those of the unthreaded loader.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _lower_this_threads_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: niceness is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        pass


def prefetch(
    iterable: Iterable[Any], depth: int = 2, *, torch_threads: int | None = 1, lower_priority: bool = True
) -> Iterator[Any]:
    """Iterate ``iterable`` on a daemon thread, at most ``depth`` items ahead of the consumer.

    An exception in the producer is raised in the consumer, at the item where it happened.
    Closing the returned generator early (a run that stops mid-epoch) stops the producer.

    ``torch_threads``: intra-op threads of torch calls made on the producer thread (a per-thread
    setting); one by default, so the processor's resizes do not start a second team of OpenMP
    threads that fights the training step's for the cores (measured on 2 cores at normal
    priority: forward and backward then slowed by more than the batch preparation took).

    ``lower_priority``: run the producer at the lowest CPU priority, so it uses the cores the
    step leaves idle instead of taking them from the step; when the step waits for a batch,
    nothing else wants the cores and the producer runs.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            if torch_threads is not None:
                import torch

                torch.set_num_threads(torch_threads)  # this thread's OpenMP setting only
            if lower_priority:
                _lower_this_threads_priority()
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_DONE)
        except BaseException as error:  # noqa: BLE001 -- handed to the consumer, raised there
            items.put(_Failure(error))

    thread = threading.Thread(target=produce, name="florence-patch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get(timeout=0.1)
            except queue.Empty:
                pass


def _prefetching_class(loader_class: type) -> type:
    """``loader_class`` whose ``__iter__`` runs on a background thread (one subclass per class)."""
    cached = _PREFETCHING_CLASSES.get(loader_class)
    if cached is None:

        def __iter__(self):
            return prefetch(loader_class.__iter__(self), depth=self._florence_prefetch_depth)

        cached = type(f"ThreadPrefetching{loader_class.__name__}", (loader_class,), {"__iter__": __iter__})
        _PREFETCHING_CLASSES[loader_class] = cached
    return cached


_PREFETCHING_CLASSES: dict[type, type] = {}


def prefetch_in_thread(loader: Any, depth: int = 2) -> Any:
    """Make a worker-less ``loader`` prepare its batches on a thread; returns the same object.

    ``loader`` is a torch ``DataLoader`` or accelerate's ``DataLoaderShard`` around one (what
    the Trainer builds). The torch loader underneath is switched to a subclass whose iteration
    runs on a thread, so accelerate's bookkeeping (end of epoch, device placement, resuming)
    stays on the training thread and ``isinstance`` checks still hold. Loaders with worker
    processes are left alone: those already prepare batches ahead.
    """
    inner = getattr(loader, "base_dataloader", loader)
    if getattr(inner, "num_workers", 1) != 0 or type(inner) in _PREFETCHING_CLASSES.values():
        return loader
    inner._florence_prefetch_depth = depth
    inner.__class__ = _prefetching_class(type(inner))
    return loader


__all__ = ["prefetch", "prefetch_in_thread"]
