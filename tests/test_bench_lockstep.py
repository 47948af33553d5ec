"""bench/lockstep.py: arms take their steps strictly in turn, time only their turns, and a failing arm is reported."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH_DIR))

from lockstep import LockstepError, Turns, run_in_lockstep  # noqa: E402

# A fake arm: takes `steps` turns, appending "<name><step>" to the log during each; sleeps `pause`
# seconds in each turn; prints the seconds of turns it held; optionally fails at step `fail_at`.
ARM = textwrap.dedent(
    """
    import argparse, sys, time
    sys.path.insert(0, {bench!r})
    from lockstep import Turns
    parser = argparse.ArgumentParser()
    parser.add_argument("name"); parser.add_argument("log"); parser.add_argument("steps", type=int)
    parser.add_argument("pause", type=float); parser.add_argument("fail_at", type=int)
    parser.add_argument("--lockstep-fds", type=int, nargs=2)
    args = parser.parse_args()
    turns = Turns(args.lockstep_fds)
    turns.wait()
    for step in range(1, args.steps + 1):
        if step == args.fail_at:
            print("arm", args.name, "breaks at step", step, flush=True)
            sys.exit(3)
        with open(args.log, "a") as log:
            log.write(f"{{args.name}}{{step}} ")
        time.sleep(args.pause)
        turns.done()
        turns.wait()
    with open(args.log, "a") as log:
        log.write(f"{{args.name}}-end ")
    print("held", turns.elapsed())
    """
)


@pytest.fixture()
def arm_script(tmp_path: Path) -> Path:
    script = tmp_path / "arm.py"
    script.write_text(ARM.format(bench=str(BENCH_DIR)))
    return script


def _command(script: Path, name: str, log: Path, steps: int, pause: float = 0.0, fail_at: int = 0) -> list[str]:
    return [sys.executable, str(script), name, str(log), str(steps), str(pause), str(fail_at)]


def test_arms_step_in_turn_and_finish_one_at_a_time(arm_script: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    commands = [_command(arm_script, name, log, 3) for name in "ABC"]
    outputs = run_in_lockstep(commands, {}, turns=3, cwd=tmp_path, timeout=60)
    assert log.read_text().split() == [
        "A1", "B1", "C1", "A2", "B2", "C2", "A3", "B3", "C3", "A-end", "B-end", "C-end",
    ]
    assert all("held" in output for output in outputs)


def test_an_arm_times_only_the_turns_it_held(arm_script: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    # B sleeps 0.2 s a turn, so A waits 3 x 0.2 s between its turns; A's own turns are short.
    commands = [_command(arm_script, "A", log, 3), _command(arm_script, "B", log, 3, pause=0.2)]
    outputs = run_in_lockstep(commands, {}, turns=3, cwd=tmp_path, timeout=60)
    held = {name: float(output.split("held")[-1]) for name, output in zip("AB", outputs)}
    assert held["A"] < 0.3  # the 0.6 s it spent waiting for B are not counted
    assert held["B"] >= 0.6


def test_a_failing_arm_is_reported_with_its_output(arm_script: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    commands = [_command(arm_script, "A", log, 3), _command(arm_script, "B", log, 3, fail_at=2)]
    with pytest.raises(LockstepError, match="arm 2 .*\n.*breaks at step 2"):
        run_in_lockstep(commands, {}, turns=3, cwd=tmp_path, timeout=60)


def test_without_lockstep_turns_do_nothing_and_elapsed_is_the_wall_clock() -> None:
    turns = Turns(None)
    turns.wait()
    turns.done()
    first = turns.elapsed()
    assert turns.elapsed() >= first > 0
