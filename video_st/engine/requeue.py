"""How a stopped training asks its launcher for a requeue: the exit code and the marker file, defined once.

slurm/_train_job.sh reads them from here (``eval "$(python -m video_st.engine.requeue)"``) rather than
restating them, and tools/submit.py imports them.
"""

from __future__ import annotations

EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped by a signal after saving a checkpoint; the launcher requeues on it
# Written beside the exit code: a launcher may see another code when its first finished rank makes it kill the
# rest (srun --kill-on-bad-exit), so the Slurm script also looks for this file in the output folder.
REQUEUE_MARKER = "stopped_for_requeue.json"

if __name__ == "__main__":
    print(f"EXIT_REQUEUE={EXIT_REQUEUE}\nREQUEUE_MARKER={REQUEUE_MARKER}")
