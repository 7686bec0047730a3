"""Child processes that end with the process that started them: the one place that asks the kernel for it.

Why: a child is a plain process. When a job's main process is killed without running any cleanup (``kill -9``,
the OOM killer, a submitit timeout that kills only the job's process), nothing tells its children: they are
re-parented to init and go on (decoding a shard, training a method) into the folders a rerun then writes. On
Linux the kernel can deliver a signal to a child when its parent dies (``prctl(PR_SET_PDEATHSIG)``); SIGKILL
needs no cooperation from the child and works while it is deep in C code. The kernel sends it when the *thread*
that forked the child ends, so a caller forks from a thread that outlives the child. Used by the preprocessing
pool's workers (preprocess/pool.py) and the benchmark's training runs (bench/jobs.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable

_log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Resolved once at import: a child between fork() and exec() (``die_with_parent_after_fork``) must not load a
# library, which takes locks another thread of the parent may have held at the fork.
_PRCTL = _load_prctl()


def set_parent_death_signal(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)`` for the calling process; False where there is no prctl (not Linux) or
    the call fails."""
    if _PRCTL is None:
        return False
    if _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        _log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return False
    return True


def die_with_parent_after_fork(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess.Popen: the child is SIGKILLed when ``parent_pid`` (the caller) dies, and
    ends at once if the parent died before the call (then no signal would ever come). Without prctl it does
    nothing: the caller's own cleanup (terminating its children on an exception or SIGTERM) is then all."""
    def preexec() -> None:
        if set_parent_death_signal(signal.SIGKILL) and os.getppid() != parent_pid:
            os._exit(1)
    return preexec
