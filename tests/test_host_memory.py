"""keep_freed_memory: glibc's thresholds fixed for CPU training, unless the user already chose."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

from florence_patch.training.host_memory import allocator_choice_of_user, on_glibc


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"PATH": "/usr/bin", "GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=2048"}, None),
        ({"LD_PRELOAD": "/usr/lib/libasan.so"}, None),
        ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX"),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "GLIBC_TUNABLES"),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD"),
        ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, "LD_PRELOAD"),
    ],
)
def test_the_users_own_allocator_settings_are_recognised(environ, expected):
    assert allocator_choice_of_user(environ) == expected


# How many bytes glibc holds in mmapped blocks after a 16 MiB malloc, in a fresh interpreter
# (whose mmap threshold is still glibc's initial 128 KiB), with or without keep_freed_memory().
MMAPPED_AFTER_MALLOC = textwrap.dedent(
    """
    import ctypes, sys
    from florence_patch.training.host_memory import keep_freed_memory

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(16 << 20)
    during = libc.mallinfo2().hblkhd
    libc.free(block)
    print(kept, during - before)
    """
)


def _has_mallinfo2() -> bool:
    return on_glibc() and hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_keep_freed_memory_serves_large_tensors_from_the_heap(monkeypatch):
    for name in [name for name in os.environ if name.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)

    def mmapped(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", MMAPPED_AFTER_MALLOC, mode], capture_output=True, text=True, check=True)
        kept, grown = out.stdout.split()
        return kept, int(grown)

    # Without it, glibc maps a 16 MiB block on its own (and unmaps it when freed).
    kept, grown = mmapped("default")
    assert kept == "None" and grown >= 16 << 20
    # With it, the block comes from the heap, where a freed block waits for the next step.
    assert mmapped("keep") == ("True", 0)


def test_keep_freed_memory_leaves_a_users_setting_alone(monkeypatch):
    from florence_patch.training import host_memory

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    calls = []
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *args, **kwargs: calls.append(args))
    assert host_memory.keep_freed_memory() is False
    assert calls == []
