"""How a training is asked to stop (StopFlag: the signals) and how it asks its launcher for a requeue: the exit
code and the marker file, defined once.

slurm/_train_job.sh reads them from here (``eval "$(python -m video_st.engine.requeue)"``) rather than
restating them, and tools/submit.py imports them.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped by a signal after saving a checkpoint; the launcher requeues on it
# Written beside the exit code: a launcher may see another code when its first finished rank makes it kill the
# rest (srun --kill-on-bad-exit), so the Slurm script also looks for this file in the output folder.
REQUEUE_MARKER = "stopped_for_requeue.json"


class StopFlag:
    """SIGUSR1 (Slurm's warning before the time limit) or SIGTERM (preemption) ask for a stop at the next step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {s: signal.signal(s, self._set) for s in (signal.SIGUSR1, signal.SIGTERM)}

    def _set(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":  # shell assignments for slurm/_train_job.sh
    sys.stdout.write(f"EXIT_REQUEUE={EXIT_REQUEUE}\nREQUEUE_MARKER={REQUEUE_MARKER}\n")
