"""The benchmarks' child processes: the project's tools run from the repository root, each into its own log, at
most ``jobs`` at once, none outliving the benchmark.

A run is a chain of steps (train, then test): a step starts when the one before it exits 0. With ``jobs`` > 1
the chains share the machine's cores: each child gets ``cores // jobs`` intra-op threads (OMP_NUM_THREADS), so
two runs of a small model on two cores take about 0.7 of the time the same two take one after the other with
two threads each (docs/benchmarks.md, "Runs side by side"). The thread count is part of what a run is: float
sums split by thread, so the same config retrains to other bytes with another count; callers record it.

No child outlives the benchmark: an exception in the loop (Ctrl-C, SIGTERM, which the loop turns into
SystemExit while it runs) terminates the running children before it propagates, and on Linux the kernel
SIGKILLs them if the benchmark dies without cleanup (``kill -9``; video_st/procs.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

import torch

from ..procs import die_with_parent_after_fork

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # where tools/ lies
POLL_S = 0.1
TERMINATE_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
TIMED_OUT = 124


@dataclass(frozen=True)
class Step:
    name: str  # what the outcome calls it: "train", "test"
    cmd: Sequence[str]
    log: str  # stdout and stderr go here, after the command line
    timeout: float | None = None  # seconds; then it is stopped and its exit code is 124


@dataclass
class Outcome:
    """A chain's end: ``code`` is 0 when every step exited 0, else the first failing step's exit code
    (``failed`` names it; 124: timed out); ``seconds`` per step that ran."""
    code: int = 0
    failed: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def threads_per_job(jobs: int) -> int:
    """Intra-op threads each of ``jobs`` runs at once gets: this process's share, at least one."""
    return max(1, torch.get_num_threads() // max(1, jobs))


def child_env(threads: int) -> dict[str, str]:
    """This process's environment with the intra-op thread count of a child set (torch reads OMP_NUM_THREADS)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@dataclass
class _Running:
    key: str
    steps: deque[Step]
    outcome: Outcome
    step: Step
    process: subprocess.Popen
    log: IO[str]
    started: float


def run_chains(chains: Mapping[str, Sequence[Step]], *, jobs: int = 1, env: Mapping[str, str] | None = None,
               on_start: Callable[[str], None] | None = None,
               on_done: Callable[[str, Outcome], None] | None = None) -> dict[str, Outcome]:
    """Run every chain of ``chains`` (key -> steps), at most ``jobs`` at once, in the given order, each child
    with ``env`` (None: this process's). ``on_start(key)`` runs before a chain's first step and
    ``on_done(key, outcome)`` after its last, in this thread, before the freed slot takes the next chain: with
    ``jobs`` 1 the runs stay strictly one after another (nothing else runs while a run's results are read);
    with more, the other children go on meanwhile, and a step that ends then is noticed when ``on_done``
    returns (its ``seconds`` include the wait). The outcomes, by key."""
    waiting = deque(chains.items())
    running: list[_Running] = []
    done: dict[str, Outcome] = {}
    with _sigterm_as_exit():
        try:
            while waiting or running:
                while waiting and len(running) < max(1, jobs):
                    key, steps = waiting.popleft()
                    if on_start:
                        on_start(key)
                    if not steps:
                        done[key] = Outcome()
                        if on_done:
                            on_done(key, done[key])
                        continue
                    queue = deque(steps)
                    running.append(_start(key, queue, queue.popleft(), Outcome(), env))
                time.sleep(POLL_S)
                for run in list(running):
                    code = _poll(run)
                    if code is None:
                        continue
                    running.remove(run)
                    if code == 0 and run.steps:
                        running.append(_start(run.key, run.steps, run.steps.popleft(), run.outcome, env))
                        continue
                    if code != 0:
                        run.outcome.code, run.outcome.failed = code, run.step.name
                    done[run.key] = run.outcome
                    if on_done:
                        on_done(run.key, run.outcome)
        finally:
            _stop_all(running)
    return done


def _poll(run: _Running) -> int | None:
    # the step's exit code once it ended (its log closed, its time kept), or None while it runs
    code = run.process.poll()
    limit = run.step.timeout
    if code is None and limit is not None and time.perf_counter() - run.started > limit:
        _stop_all([run])
        with open(run.step.log, "a", encoding="utf-8") as log:
            log.write(f"\ntimed out after {limit} s\n")
        code = TIMED_OUT
    if code is not None:
        run.log.close()
        run.outcome.seconds[run.step.name] = time.perf_counter() - run.started
    return code


def run_logged(cmd: Sequence[str], log_path: str, timeout: float | None, *,
               env: Mapping[str, str] | None = None) -> tuple[int, float]:
    """One command from the repository root with stdout and stderr into ``log_path``; (exit code, seconds)."""
    outcome = run_chains({"run": [Step(name="run", cmd=cmd, log=log_path, timeout=timeout)]}, env=env)["run"]
    return outcome.code, outcome.seconds.get("run", 0.0)


def log_tail(path: str, lines: int = 2) -> str:
    """The last lines of a log, on one line (the whole log stays in the run folder)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return " // ".join(line.strip() for line in f.readlines()[-lines:] if line.strip())
    except OSError:
        return ""


def _start(key: str, steps: deque[Step], step: Step, outcome: Outcome, env: Mapping[str, str] | None) -> _Running:
    log = open(step.log, "w", encoding="utf-8")  # closed when the step ends (_poll) or is stopped (_stop_all)
    try:
        log.write("$ " + " ".join(step.cmd) + "\n")
        log.flush()
        process = subprocess.Popen(list(step.cmd), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(env) if env is not None else None,
                                   preexec_fn=die_with_parent_after_fork(os.getpid()))
    except BaseException:
        log.close()
        raise
    return _Running(key=key, steps=steps, outcome=outcome, step=step, process=process, log=log,
                    started=time.perf_counter())


def _stop_all(runs: Sequence[_Running]) -> None:
    """SIGTERM to every child first (the training tool then stops at a step boundary and its loader workers end
    with it), then one shared grace period, then SIGKILL to what is left; every log closed whatever happens."""
    try:
        for run in runs:
            if run.process.poll() is None:
                run.process.terminate()
        deadline = time.monotonic() + TERMINATE_GRACE_S
        for run in runs:
            try:
                run.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for run in runs:
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()
            run.log.close()


class _sigterm_as_exit:
    """While the loop runs (in the main thread), SIGTERM raises SystemExit(143) so ``finally`` stops the
    children; the previous handler comes back afterwards."""

    def __enter__(self) -> None:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_exit)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
