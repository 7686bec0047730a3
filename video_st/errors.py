"""The one base class of expected failures: bad input, a missing file, a wrong checkpoint, an unsupported setting.

Tools catch :class:`VideoSTError` at their boundary and print its message as one ``error: ...`` line with exit
code 2; anything else that escapes is a bug and keeps its traceback. Messages name the file, line, key and value.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable


class VideoSTError(Exception):
    """An expected failure; the message is the whole story, for one line."""


class ConfigError(VideoSTError, ValueError):
    """A config key or value that is wrong, or a setting this machine cannot run; the message names the key."""


class CheckpointError(VideoSTError, ValueError):
    """A checkpoint that cannot be read, converted or used as asked; the message names the file and the cause."""


def is_rank_zero() -> bool:
    """Rank 0 of a torchrun / deepspeed / srun launch, or a process started alone."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "SLURM_PROCID"))


def run_tool(main: Callable[[], int], *, verbose: bool = False) -> int:
    """A tool's boundary: ``main()``'s exit code, or for an expected failure one ``error: ...`` line on stderr
    (rank 0 only: every rank meets the same bad input) and exit code 2. ``verbose`` adds the traceback. Anything
    else propagates with its traceback: it is a bug."""
    try:
        return main()
    except VideoSTError as err:
        if is_rank_zero():
            sys.stderr.write(f"error: {err}\n")
            if verbose:
                traceback.print_exc()
        return 2
