"""Batches prepared on a background thread: same batches, same order, errors surface, no leaks."""

from __future__ import annotations

import sys
import threading
import time

import pytest
import torch
from torch.utils.data import DataLoader

from florence_patch.training.prefetch import prefetch, prefetch_in_thread


def test_items_arrive_in_order_and_are_made_on_another_thread():
    made_on: list[str] = []

    def produce():
        for i in range(10):
            made_on.append(threading.current_thread().name)
            yield i

    assert list(prefetch(produce(), depth=2)) == list(range(10))
    assert set(made_on) == {"florence-patch-prefetch"}


def test_the_producer_runs_ahead_while_the_consumer_works():
    made = []

    def produce():
        for i in range(3):
            made.append(i)
            yield i

    items = prefetch(produce(), depth=2)
    assert next(items) == 0
    deadline = time.monotonic() + 5
    while len(made) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made == [0, 1, 2]  # items 1 and 2 were prepared before anyone asked for them
    assert list(items) == [1, 2]


def test_an_error_is_raised_in_the_consumer_at_its_item():
    def produce():
        yield 1
        raise ValueError("page 2 is not an image")

    items = prefetch(produce())
    assert next(items) == 1
    with pytest.raises(ValueError, match="page 2"):
        next(items)


def test_closing_early_stops_the_producer():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = {t for t in threading.enumerate() if t.name == "florence-patch-prefetch"}
    items = prefetch(endless(), depth=2)
    assert next(items) == 0
    items.close()
    alive = {t for t in threading.enumerate() if t.name == "florence-patch-prefetch"} - before
    assert not any(t.is_alive() for t in alive)


def _loader(num_workers: int = 0) -> DataLoader:
    data = [torch.full((2,), float(i)) for i in range(23)]
    return DataLoader(data, batch_size=4, shuffle=True, num_workers=num_workers, generator=torch.Generator().manual_seed(7))


def test_a_worker_less_dataloader_gives_the_same_batches():
    expected = [b.clone() for b in _loader()]
    loader = prefetch_in_thread(_loader())
    assert isinstance(loader, DataLoader) and type(loader) is not DataLoader
    got = list(loader)
    assert len(got) == len(expected) == len(loader)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert prefetch_in_thread(loader) is loader and type(loader).__mro__[1] is DataLoader  # not wrapped twice


def test_a_loader_with_workers_is_left_alone():
    loader = _loader(num_workers=1)
    assert type(prefetch_in_thread(loader)) is DataLoader


def test_accelerate_prepared_loader_keeps_its_epochs_and_end_of_epoch_flag():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    plain = accelerator.prepare(_loader())
    threaded = prefetch_in_thread(accelerator.prepare(_loader()))
    for epoch in range(2):
        plain.set_epoch(epoch)
        threaded.set_epoch(epoch)
        expected = [b.clone() for b in plain]
        got = []
        for batch in threaded:
            got.append(batch.clone())
            # accelerate flags the last batch on the consuming thread, not batches early
            assert threaded.end_of_dataloader == (len(got) == len(expected))
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_the_producer_runs_single_threaded_at_low_priority_and_leaves_the_consumer_alone():
    import os

    seen = []

    def produce():
        seen.append((torch.get_num_threads(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        yield 0

    threads, priority = torch.get_num_threads(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert list(prefetch(produce())) == [0]
    assert seen == [(1, 19)]
    assert (torch.get_num_threads(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())) == (threads, priority)


def test_a_core_is_spare_with_an_accelerator_or_when_torch_leaves_one(monkeypatch):
    from florence_patch.training import config as config_module
    from florence_patch.training import prefetch as prefetch_module

    threads = torch.get_num_threads()
    monkeypatch.setattr(config_module, "usable_cores", lambda: threads)
    assert not prefetch_module.a_core_is_spare("cpu")
    assert not prefetch_module.a_core_is_spare(torch.device("cpu"))
    assert prefetch_module.a_core_is_spare("cuda")  # the host waits for the device
    monkeypatch.setattr(config_module, "usable_cores", lambda: threads + 1)
    assert prefetch_module.a_core_is_spare("cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: another rank's threads take the spare core
    assert not prefetch_module.a_core_is_spare("cpu")


@pytest.mark.parametrize("spare", [False, True])
def test_prefetch_where_a_core_is_spare_threads_a_worker_less_loader_only_then(monkeypatch, spare):
    from florence_patch.training import prefetch as prefetch_module

    seen = []
    monkeypatch.setattr(prefetch_module, "a_core_is_spare", lambda device: seen.append(device) or spare)
    loader = _loader()
    assert prefetch_module.prefetch_where_a_core_is_spare(loader, "cpu") is loader
    assert seen == ["cpu"]
    assert (type(loader) in prefetch_module._PREFETCHING_CLASSES.values()) is spare


@pytest.mark.parametrize("spare", [False, True])
def test_training_prepares_batches_on_a_thread_only_where_a_core_is_spare(tmp_path, monkeypatch, spare):
    from transformers import TrainingArguments

    from florence_patch.training import prefetch as prefetch_module
    from florence_patch.training.train import _trainer_classes

    monkeypatch.setattr(prefetch_module, "a_core_is_spare", lambda device: spare)
    trainer_class, _, _ = _trainer_classes()
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, dataloader_num_workers=0, report_to=[],
        remove_unused_columns=False, per_device_train_batch_size=2,
    )
    rows = [{"x": torch.full((2,), float(i))} for i in range(6)]
    trainer = trainer_class(
        model=torch.nn.Linear(2, 2), args=args, train_dataset=rows,
        data_collator=lambda batch: {"x": torch.stack([row["x"] for row in batch])}, generation_eval=None,
    )
    loader = trainer.get_train_dataloader()
    inner = getattr(loader, "base_dataloader", loader)
    assert (type(inner) in prefetch_module._PREFETCHING_CLASSES.values()) is spare
    assert sorted(float(x) for batch in loader for x in batch["x"][:, 0]) == [float(i) for i in range(6)]
