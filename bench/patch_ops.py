"""Patch operations over caches holding 1, 10 and 100 Florence-2 copies, and `--help` latency.

Each copy is its own hub repo at a needs-fix revision (the remote code of the real upstream
revision 33ee8e1 when FLORENCE_PATCH_UPSTREAM_DIR points at a local copy of it, else our own
tiny Florence-2-shaped code). Commands run as a user runs them: `florence-patch ...` processes.

    .venv/bin/python bench/patch_ops.py [--sizes 1 10 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, report  # noqa: E402

CLI = [sys.executable, "-m", "florence_patch.cli.main"]


def remote_code() -> tuple[dict[str, bytes], str]:
    upstream = os.environ.get("FLORENCE_PATCH_UPSTREAM_DIR")
    if upstream and (Path(upstream) / "33ee8e1").is_dir():
        d = Path(upstream) / "33ee8e1"
        names = ("modeling_florence2.py", "configuration_florence2.py", "processing_florence2.py", "config.json")
        return {n: (d / n).read_bytes() for n in names if (d / n).exists()}, "upstream 33ee8e1"
    from florence_patch.demo.checkpoint import remote_code_files

    return remote_code_files("needs-fix"), "florence-patch tiny fixture"


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(CLI + args, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()
    from florence_patch.demo.hub_layout import write_hub_repo

    files, source = remote_code()
    title = "patch operations"
    help_times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run(CLI + ["--help"], capture_output=True, check=True)
        help_times.append(time.perf_counter() - start)
    report({"what": "help", "seconds_median": round(sorted(help_times)[2], 3), "goal_s": 1.0}, title=title)
    for size in args.sizes:
        home = Path(tempfile.mkdtemp(prefix=f"fp-bench-{size}-"))
        try:
            # A fresh outcome cache: "cold" is a first status on a machine that never ran florence-patch.
            env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", FLORENCE_PATCH_CACHE_DIR=str(home / "fp-cache"))
            for var in ("HF_HUB_CACHE", "HF_MODULES_CACHE", "HUGGINGFACE_HUB_CACHE"):
                env.pop(var, None)
            for i in range(size):
                write_hub_repo(home / "hub", f"bench/florence-2-copy-{i:03d}", {f"{i:040x}"[-40:]: files}, {"main": f"{i:040x}"[-40:]})
            # First sight of this content: libcst runs, unless the shipped table of published files knows it.
            cold = timed(["status"], env)
            warm = timed(["status"], env)
            apply = timed(["apply"], env)  # includes transformers creating each modules-cache copy
            status_after = timed(["status"], env)
            check = timed(["apply", "--check"], env)
            revert = timed(["revert"], env)
            common = {"copies": size, "source": source, "load_avg": load_average()}
            report({"what": "status", "cold_s": round(cold, 3), "warm_s": round(warm, 3), "goal_s": 2.0,
                    "meets_goal": max(cold, warm) < 2.0, **common}, title=title)
            report({"what": "apply", "seconds": round(apply, 3), "goal_s": 10.0, "meets_goal": apply < 10.0, **common},
                   title=title)
            report({"what": "status-after-apply", "seconds": round(status_after, 3), **common}, title=title)
            report({"what": "apply-check", "seconds": round(check, 3), **common}, title=title)
            report({"what": "revert", "seconds": round(revert, 3), **common}, title=title)
        finally:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
