"""A local process pool that survives its workers dying: the work items in flight when one dies are retried one
at a time, so only the item that kills its worker (a decoder crash, the OOM killer) is given up on.

Workers die with the process that started them (:func:`_die_with_parent`): a ``kill -9`` of the job, a Slurm
cancel or a submitit timeout must not leave orphans that go on through the queue (and collide with a rerun).

Generic (items in, results out); the preprocessing shards use it for ``--workers`` > 1.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import TypeVar

from ..procs import set_parent_death_signal

_log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


def imap_isolating(
    fn: Callable[[Item], Result], items: Iterable[Item], *, workers: int,
    on_crash: Callable[[Item, float], Result],
) -> Iterator[Result]:
    """``fn(item)`` for every item in ``workers`` processes, results in completion order. A worker that dies
    breaks the whole pool: the items then in flight are retried, in submission order, each alone in a fresh
    pool; an item whose worker dies again yields ``on_crash(item, seconds of that try)``. ``fn`` must pickle
    (a module-level function, or a ``functools.partial`` of one); exceptions ``fn`` raises propagate."""
    pending = deque(items)
    while pending:
        finished: list[Result] = []
        suspects: list[Item] = []
        with _pool(workers) as pool:
            running: dict = {}  # future -> item, in submission order
            try:
                while pending or running:
                    while pending and len(running) < 2 * workers:  # bounded: a break loses little
                        # Taken off the queue only once submitted: submit raises BrokenProcessPool when a
                        # worker has died since the last wait, and the item must stay pending, not vanish.
                        running[pool.submit(fn, pending[0])] = pending[0]
                        pending.popleft()
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        result = future.result()  # raises BrokenProcessPool
                        del running[future]
                        yield result
            except BrokenProcessPool:
                _log.warning("a worker process died; retrying the %d items in flight one at a time", len(running))
                for future, item in running.items():
                    if future.done() and future.exception() is None:
                        finished.append(future.result())
                    else:
                        suspects.append(item)
        yield from finished
        for item in suspects:
            yield _isolated(fn, item, on_crash=on_crash)


def _isolated(fn: Callable[[Item], Result], item: Item, *, on_crash: Callable[[Item, float], Result]) -> Result:
    start = time.perf_counter()
    with _pool(1) as pool:
        try:
            return pool.submit(fn, item).result()
        except BrokenProcessPool:
            return on_crash(item, time.perf_counter() - start)


@contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    import multiprocessing

    # fork where there is one: a spawned worker would re-import video_st (and torch) for seconds each.
    # The workers only decode and encode; nothing here holds a lock a forked child could inherit.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_die_with_parent,
                               initargs=(os.getpid(),))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------- workers die with the parent

_WATCH_INTERVAL_S = 0.5


def _die_with_parent(parent_pid: int) -> None:
    """Worker initialiser: end this worker when the process that started it (``parent_pid``) dies.

    On Linux the kernel SIGKILLs it (video_st/procs.py says why a job needs this). The kernel sends it when the
    *thread* that forked the worker ends; the pool forks its workers from the thread that first submits (the
    one iterating :func:`imap_isolating`), which outlives the pool. Elsewhere (macOS, BSD) a daemon thread polls
    ``os.getppid()``, which changes when the parent dies and the worker is re-parented; it needs the GIL, so a
    worker stuck in C code holding it ends only when that call returns. (Windows never re-parents, so
    ``getppid`` cannot tell there; the preprocessing jobs run on Linux and macOS.)"""
    if set_parent_death_signal(signal.SIGKILL):
        # The parent may have died between fork() and the prctl() call: then no signal will ever come.
        if os.getppid() != parent_pid:
            os._exit(1)
        return
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="watch-parent", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_WATCH_INTERVAL_S)
    os._exit(1)
