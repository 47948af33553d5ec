"""Shared by the bench scripts: one JSON line per measurement, appended to bench/RESULTS.md."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, no GPU"


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load: on a shared 2-core VM, what explains a slow run."""
    return [round(value, 2) for value in os.getloadavg()]


def report(record: dict, *, title: str) -> None:
    """Print one JSON line and append it to RESULTS.md under a dated heading for this run."""
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    header = f"\n### {title} — {_dt.date.today().isoformat()} — {machine()}\n\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nOne JSON line per measurement, as printed by the bench scripts.\n"
    if not text.rstrip().endswith(header.strip()) and f"<!-- run {os.getpid()} -->" not in text:
        text += header + f"<!-- run {os.getpid()} -->\n"
    text += f"    {line}\n"
    RESULTS.write_text(text)
