"""Run benchmark arms side by side, one step at a time: each step's turn passes from arm to arm.

On a shared VM, throughput drifts by 10 % or more over the minutes between one arm's run and the
next, which is of the order of the differences a CPU benchmark measures. In lockstep the arms'
processes are started together and run their steps in turns (arm 1's step 1, arm 2's step 1, ...,
arm 1's step 2, ...), so the machine's drift reaches every arm alike; each arm times only its own
turns. While one arm holds the turn the others wait blocked on a pipe, so it has the cores alone.

Protocol, over a pair of pipes per arm (``--lockstep-fds GO DONE``, inherited file descriptors):
the arm writes ``r`` once when it is ready for its first turn and then reads ``g`` for each turn
it gets; after each step it writes ``d`` and waits for its next turn. It runs what follows its
last step (saving, printing its result) in one last turn, on its own.

Only for CPU arms without DataLoader workers or prefetching threads: anything of an arm that
works between its turns would run beside the arm holding the turn.
"""

from __future__ import annotations

import os
import select
import subprocess
import tempfile
import time
from pathlib import Path

READY, GO, DONE = b"r", b"g", b"d"


class Turns:
    """The arm's side: wait for a turn, hand it back, and the time spent holding turns.

    Without ``fds`` (an arm run on its own) waiting and handing back do nothing and
    :meth:`elapsed` is the wall clock, so an arm times itself the same way in either mode.
    """

    def __init__(self, fds: list[int] | None) -> None:
        self.enabled = fds is not None
        self._go = os.fdopen(fds[0], "rb", buffering=0) if fds else None
        self._done = os.fdopen(fds[1], "wb", buffering=0) if fds else None
        self._ready_sent = False
        self._held = 0.0
        self._since: float | None = None

    def wait(self) -> None:
        """Block until this arm's next turn."""
        if not self.enabled:
            return
        if not self._ready_sent:
            self._done.write(READY)
            self._ready_sent = True
        if self._go.read(1) != GO:
            raise SystemExit("lockstep: the benchmark's orchestrator went away")
        self._since = time.perf_counter()

    def done(self) -> None:
        """Hand the turn back after a step."""
        if not self.enabled:
            return
        self._held += time.perf_counter() - self._since
        self._since = None
        self._done.write(DONE)

    def elapsed(self) -> float:
        """Seconds of turns held so far (a clock that stops between turns); the wall clock without lockstep."""
        if not self.enabled:
            return time.perf_counter()
        current = time.perf_counter() - self._since if self._since is not None else 0.0
        return self._held + current


class LockstepError(RuntimeError):
    pass


def run_in_lockstep(
    commands: list[list[str]], env: dict[str, str], *, turns: int, cwd: Path, timeout: float = 1800.0
) -> list[str]:
    """Start ``commands`` together, give each ``turns`` turns in rotation and one last turn to finish.

    Each command gets ``--lockstep-fds GO DONE`` appended. Returns each arm's output (stdout and
    stderr). Raises LockstepError, with the tail of an arm's output, when an arm fails, stops
    taking part, or takes longer than ``timeout`` seconds in all.
    """
    deadline = time.monotonic() + timeout
    arms: list[tuple[subprocess.Popen, int, int, object]] = []
    try:
        for command in commands:
            go_read, go_write = os.pipe()
            done_read, done_write = os.pipe()
            output = tempfile.TemporaryFile()
            process = subprocess.Popen(
                [*command, "--lockstep-fds", str(go_read), str(done_write)],
                env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, pass_fds=(go_read, done_write),
            )
            os.close(go_read)  # the child holds its ends: a child that exits closes them
            os.close(done_write)
            arms.append((process, go_write, done_read, output))
        for index in range(len(arms)):
            _expect(arms, index, READY, deadline)
        for _ in range(turns):
            for index in range(len(arms)):
                _give_turn(arms, index)
                _expect(arms, index, DONE, deadline)
        outputs = []
        for index, (process, _, _, output) in enumerate(arms):
            _give_turn(arms, index)
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise LockstepError(f"arm {index + 1} did not finish in time:\n{_tail(output)}") from None
            if process.returncode != 0:
                raise LockstepError(f"arm {index + 1} failed ({process.returncode}):\n{_tail(output)}")
            outputs.append(_read(output))
        return outputs
    finally:
        for process, go_write, done_read, output in arms:
            if process.poll() is None:
                process.kill()
                process.wait()
            for fd in (go_write, done_read):
                try:
                    os.close(fd)
                except OSError:
                    pass
            output.close()


def _give_turn(arms, index: int) -> None:
    process, go_write, _, output = arms[index]
    try:
        os.write(go_write, GO)
    except BrokenPipeError:
        raise LockstepError(f"arm {index + 1} exited ({process.wait()}) before its turn:\n{_tail(output)}") from None


def _expect(arms, index: int, token: bytes, deadline: float) -> None:
    process, _, done_read, output = arms[index]
    remaining = deadline - time.monotonic()
    readable, _, _ = select.select([done_read], [], [], max(0.0, remaining))
    if not readable:
        raise LockstepError(f"arm {index + 1} took longer than the benchmark's time limit:\n{_tail(output)}")
    received = os.read(done_read, 1)
    if received != token:
        status = process.wait(timeout=60) if not received else process.poll()
        raise LockstepError(
            f"arm {index + 1} sent {received!r} instead of {token!r} (exit status {status}):\n{_tail(output)}"
        )


def _read(output) -> str:
    output.seek(0)
    return output.read().decode("utf-8", "replace")


def _tail(output, chars: int = 4000) -> str:
    return _read(output)[-chars:]
