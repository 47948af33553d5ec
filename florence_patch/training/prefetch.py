"""Prepare the next batches on a background thread when there are no DataLoader workers.

Without worker processes (`train` and `eval` start none on a CPU-only machine, see
``resolve_num_workers``), preparing a batch (decoding the pages, the processor's resize and
normalise, tokenising) runs between steps. A thread can do it meanwhile, where a core is free
for it: with an accelerator (the host mostly waits for the device) or when torch's intra-op
threads leave a core idle. Where they take every core, as on the bench's 2 cores, the thread
slowed training down (measured: bench/RESULTS.md). Why is not established: the step's OpenMP
threads wait for one another at the end of every parallel region, so a thread that takes a
core from one of them holds up all of them; but preparing pages on other threads *between*
steps slowed the step there too (cc41e10, reverted). ``a_core_is_spare`` says which case a run
is in; training and evaluation prefetch on a thread only when it is true.
The thread runs at the lowest CPU priority with one torch thread.

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


def a_core_is_spare(device: Any) -> bool:
    """Whether a thread preparing batches would have a core the step does not use.

    True with an accelerator (``device`` not the CPU): the host launches work and waits. On the
    CPU, only when torch's intra-op threads (of all the ranks on this machine, under torchrun)
    number fewer than the usable cores: otherwise the thread can only take a core from the
    step's OpenMP team. On the bench's 2 cores with 2 torch threads, interleaved over 7 rounds,
    the default training arm ran at 0.84-0.93x the recipe's loop with the thread and 0.84-1.11x
    (median 1.005x) without it; its forward and backward took 3-24 % longer with the thread, in
    every round (why so much is not established: see the module's docstring).
    """
    import torch

    from florence_patch.training.config import ranks_on_this_machine, usable_cores

    if torch.device(device).type != "cpu":
        return True
    return torch.get_num_threads() * ranks_on_this_machine() < usable_cores()


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


def prefetch_where_a_core_is_spare(loader: Any, device: Any, depth: int = 2) -> Any:
    """``prefetch_in_thread(loader)`` where ``a_core_is_spare(device)``, else ``loader`` as it is."""
    return prefetch_in_thread(loader, depth) if a_core_is_spare(device) else loader


__all__ = ["a_core_is_spare", "prefetch", "prefetch_in_thread", "prefetch_where_a_core_is_spare"]
