"""A batch's pages prepared on several threads: how many, how they are cut, and that the batch
comes out the same."""

from __future__ import annotations

import threading

import pytest
import torch

from florence_patch.training import config as config_module
from florence_patch.training import page_threads as page_threads_module
from florence_patch.training import prefetch as prefetch_module
from florence_patch.training.page_threads import map_in_chunks, page_threads


def test_chunks_are_consecutive_near_equal_and_in_order():
    calls = []

    def record(chunk):
        calls.append(list(chunk))
        return list(chunk)

    assert map_in_chunks(record, list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert sorted(calls) == [[0, 1, 2], [3, 4], [5, 6]]
    assert map_in_chunks(record, [1, 2], 8) == [[1], [2]]  # never more chunks than items


def test_one_chunk_runs_on_the_calling_thread_more_on_the_pool_with_one_torch_thread():
    def where(chunk):
        return threading.current_thread(), torch.get_num_threads()

    (alone,) = map_in_chunks(where, [1, 2, 3], 1)
    assert alone[0] is threading.current_thread()
    pooled = map_in_chunks(where, [1, 2, 3, 4], 2)
    assert all(thread is not threading.current_thread() for thread, _ in pooled)
    assert all(threads == 1 for _, threads in pooled)  # one OpenMP thread each: no second team a thread


def test_a_failing_chunk_raises_in_the_caller():
    def fail_on_three(chunk):
        if 3 in chunk:
            raise ValueError("page 3 is unreadable")
        return chunk

    with pytest.raises(ValueError, match="page 3"):
        map_in_chunks(fail_on_three, [1, 2, 3, 4], 2)


def test_page_threads_per_case(monkeypatch):
    monkeypatch.setattr(config_module, "usable_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert page_threads("cpu", 2) == 1  # a DataLoader worker: its siblings take the other cores
    # torch's threads take every core: the batch is prepared between steps, on all of them.
    assert page_threads("cpu", 0) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks share the 8 cores
    assert page_threads("cpu", 0) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)  # the prefetch thread runs beside the step
    assert prefetch_module.a_core_is_spare("cpu")
    assert page_threads("cpu", 0) == 2  # the two cores the step leaves
    assert page_threads("cuda", 0) == 7  # the host thread launching the step keeps one core
    monkeypatch.setattr(config_module, "usable_cores", lambda: 1)
    assert page_threads("cuda", 0) == 1


def test_a_forked_process_starts_its_own_pool(monkeypatch):
    map_in_chunks(list, [1, 2], 2)
    pool = page_threads_module._POOL[2]
    monkeypatch.setattr(page_threads_module.os, "getpid", lambda: -1)  # as a DataLoader worker sees it
    map_in_chunks(list, [1, 2], 2)
    forked = page_threads_module._POOL
    assert forked[2] is not pool and forked[0] == -1
    forked[2].shutdown()
    monkeypatch.setattr(page_threads_module, "_POOL", None)
