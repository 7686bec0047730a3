"""Where a preprocessing output is written before it exists: a temporary of its own attempt, renamed when whole.

A temporary is ``<final stem>.tmp.<host>-<pid>-<token><final ext>`` in the output's own folder: the ".tmp."
marker keeps it out of ``folders.read_video_folder`` (and of any listing of outputs); host and pid tell
whether its attempt may still be running; the token makes it unique even when a pid is reused; the same folder
makes the final rename atomic. When a video comes up again, the temporaries of its earlier attempts are removed,
except those of a process still running on this host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager

_log = logging.getLogger(__name__)


@contextmanager
def staged(final: str) -> Iterator[str]:
    """Write to a new temporary of this attempt (same folder, so the rename is atomic), then replace ``final``.
    On an error the temporary goes; on a kill (KeyboardInterrupt, SIGKILL) it stays under its temporary name,
    for a later run to remove (:func:`remove_stale_temporaries`)."""
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tmp_name(final)
    try:
        yield tmp
    except Exception:
        remove(tmp)
        raise
    remove(final)  # os.replace cannot replace a folder
    os.replace(tmp, final)


_TMP_MARK = ".tmp."
_TMP_OWNER = re.compile(r"(?P<host>[A-Za-z0-9_]*)-(?P<pid>[0-9]+)-(?P<token>[0-9a-f]{8})")


def host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0])[:32]


def tmp_name(output: str) -> str:
    """A temporary name for one attempt at ``output``, unique to it."""
    stem, ext = os.path.splitext(output)
    return f"{stem}{_TMP_MARK}{host()}-{os.getpid()}-{secrets.token_hex(4)}{ext}"


def temporaries(output: str) -> Iterator[tuple[str, str | None, int | None]]:
    """(path, host, pid) of every temporary of ``output`` in its folder, host and pid None for the fixed
    ``name.tmp.mp4`` / ``name.tmp`` of earlier versions."""
    folder = os.path.dirname(output)
    stem, ext = os.path.splitext(os.path.basename(output))
    prefix = stem + _TMP_MARK
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    legacy = {f"{stem}.tmp{ext}" if ext else f"{stem}.tmp"}
    for name in names:
        if name in legacy:
            yield os.path.join(folder, name), None, None
        elif name.startswith(prefix) and name.endswith(ext):
            match = _TMP_OWNER.fullmatch(name[len(prefix): len(name) - len(ext)])
            if match:
                yield os.path.join(folder, name), match["host"], int(match["pid"])


def remove_stale_temporaries(output: str) -> None:
    """Remove the temporaries of ``output`` whose attempt is over: left by this process (an earlier, interrupted
    run in it), written on another host, or by a process that no longer runs here. Another host's attempt at
    the same video could only be a second copy of the same shard running at once, which a job never starts (a
    Slurm requeue ends the first copy first)."""
    here = host()
    for path, owner_host, pid in temporaries(output):
        if owner_host == here and pid is not None and pid != os.getpid() and _running(pid, since=path):
            _log.warning("left %s: its process %d is still running", path, pid)
            continue
        _log.info("removing %s (left by a killed attempt)", path)
        with contextlib.suppress(FileNotFoundError):  # another attempt's cleanup got there first
            remove(path)


def _running(pid: int, *, since: str) -> bool:
    """Whether ``pid`` is a live process that may have written ``since``: not a zombie (dead, not yet reaped),
    and, where /proc tells, started before ``since`` was last modified (else the pid was reused)."""
    try:
        with contextlib.suppress(PermissionError):  # another user's process: alive
            os.kill(pid, 0)
    except OSError:  # no such process (ProcessLookupError), or the pid cannot be asked
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()  # after "pid (comm)": state is field 3, starttime 22
        state, start_ticks = fields[0], int(fields[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        started = boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return True  # no /proc (macOS): kill(0) said alive
    if state in ("Z", "X"):
        return False
    try:
        modified = os.stat(since).st_mtime
    except OSError:
        return False
    return started <= modified + 1.0  # btime has one-second resolution


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
