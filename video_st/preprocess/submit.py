"""Every shard of a preprocessing job as one submitit array (Slurm, or local processes), and the wait for them.

Each array task runs :func:`video_st.preprocess.run.run_shard`, the same function a single ``--shard`` run
calls; the shard that finishes last merges the lists, so a job left to finish on its own (``--no-wait``, or a
deadline passed) still ends with them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .media import describe
from ..errors import ConfigError
from .jobs import JobSpec
from .run import ShardSummary, run_shard

_log = logging.getLogger(__name__)

ShardDone = Callable[[int, ShardSummary | None, str | None], None]  # (shard, summary, error)
_PATH_FIELDS = ("input", "output", "root", "classes", "ssv2_labels")


@dataclass
class SubmitResult:
    summaries: list[ShardSummary]
    errors: dict[int, str]  # shard -> why it has no result (job failed, killed, or still running at the deadline)
    job_ids: list[str]


def submit(
    spec: JobSpec, *, num_shards: int, folder: str, cluster: str | None = None, workers: int = 1,
    partition: str | None = None, time_min: int = 240, cpus: int | None = None, array_parallelism: int = 16,
    timeout_s: float, poll_s: float = 5.0, on_done: ShardDone | None = None, wait_for_results: bool = True,
) -> SubmitResult:
    """Run every shard as one submitit array job (``cluster`` "slurm", "local", or None: auto-detect), each
    task calling :func:`run_shard`, and wait at most ``timeout_s`` for all of them (a job killed without a
    result must not hang the caller). Local jobs still running at the deadline are cancelled, Slurm jobs are
    left to finish (the last shard merges the lists). ``on_done(shard, summary, error)`` as each ends."""
    import submitit

    # Jobs may start in another working directory: every path they get is absolute.
    spec = dataclasses.replace(spec, **{name: os.path.abspath(getattr(spec, name)) for name in _PATH_FIELDS
                                        if getattr(spec, name) is not None})
    if cluster == "slurm" and shutil.which("srun") is None:
        raise ConfigError("--slurm needs a Slurm cluster (no srun on PATH); use --submitit-local or --shard")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(
        name=f"preprocess_{spec.subcommand}", timeout_min=time_min, cpus_per_task=cpus,
        slurm_partition=partition, slurm_array_parallelism=array_parallelism,
    )
    task = functools.partial(_shard_job, spec=spec, num_shards=num_shards, workers=workers)
    jobs = executor.map_array(task, list(range(num_shards)))
    job_ids = [str(job.job_id) for job in jobs]
    _log.info("submitted %d shards as %s (%s)", num_shards, job_ids[0].split("_")[0], executor.cluster)
    if not wait_for_results:
        return SubmitResult([], {}, job_ids)
    summaries, errors = _wait(jobs, timeout_s=timeout_s, poll_s=poll_s, on_done=on_done)
    if errors and executor.cluster == "local":
        for shard in errors:
            if not jobs[shard].done():
                jobs[shard].cancel(check=False)
    return SubmitResult(summaries, errors, job_ids)


def _shard_job(shard: int, *, spec: JobSpec, num_shards: int, workers: int) -> ShardSummary:
    # The entry point of a fresh job process: without a handler, only warnings would reach the job's log.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_shard(spec, shard=shard, num_shards=num_shards, workers=workers)


def _wait(jobs: Sequence, *, timeout_s: float, poll_s: float, on_done: ShardDone | None,
          ) -> tuple[list[ShardSummary], dict[int, str]]:
    """Poll ``done()`` (never a bare ``result()``: it can block forever on a job that died without one)."""
    deadline = time.monotonic() + timeout_s
    pending, summaries, errors = dict(enumerate(jobs)), {}, {}
    while pending:
        for shard, job in list(pending.items()):
            if not job.done():
                continue
            del pending[shard]
            try:
                summaries[shard] = job.result()
            except Exception as err:  # the job raised, or was killed without a result
                errors[shard] = f"job {job.job_id}: {describe(err)}"
            if on_done is not None:
                on_done(shard, summaries.get(shard), errors.get(shard))
        if pending and time.monotonic() >= deadline:
            for shard, job in pending.items():
                errors[shard] = f"job {job.job_id}: not finished after {timeout_s:.0f} s"
            break
        if pending:
            time.sleep(poll_s)
    return [summaries[i] for i in sorted(summaries)], errors
