#!/usr/bin/env python
"""Submit training, testing or preprocessing to Slurm from Python (submitit), with the same config files.

    python tools/submit.py train --config configs/datasets/k400.yaml configs/methods/sparse_tuning.yaml \\
        --nodes 2 --gpus-per-node 8 --partition gpu --time 1440 data.root=/data/k400 output_dir=runs/st_k400
    python tools/submit.py test --config ... --checkpoint runs/st_k400/checkpoints output_dir=runs/st_k400
    python tools/submit.py preprocess scan --input /data/k400/train.csv --root /data/k400 --output /data/scan \\
        --num-shards 64 --partition cpu
    python tools/submit.py train --local --config configs/tiny_cpu.yaml          # no Slurm: a local process

Training jobs requeue themselves when stopped (Slurm's USR1 before the time limit, preemption): the training
saves a checkpoint and exits 75, the job asks Slurm to requeue it, and the requeued job resumes from that
checkpoint (same output_dir). --local runs the same jobs with submitit's local executor. Logs: --folder
(default OUTPUT_DIR/submitit/<job id>).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))



class TrainJob:
    """What every task of a submitted training job runs (submitit starts one per GPU under srun)."""

    def __call__(self, config: list[str] | None, overrides: list[str]) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from video_st.config import load_config
        from video_st.engine.requeue import EXIT_REQUEUE
        from video_st.engine.train import train

        code = train(load_config(config, overrides))
        job_id = os.environ.get("SLURM_JOB_ID")
        if code == EXIT_REQUEUE and job_id and os.environ.get("SLURM_PROCID", "0") == "0":
            subprocess.run(["scontrol", "requeue", job_id], check=False)
        return code


class TestJob:
    def __call__(self, config: list[str] | None, overrides: list[str], checkpoint: str | None) -> dict:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from video_st.config import load_config
        from video_st.engine.multiview import run_test

        return run_test(load_config(config, overrides), checkpoint)


def _executor(args: argparse.Namespace, output_dir: str, name: str):
    import submitit

    folder = args.folder or os.path.join(output_dir, "submitit", "%j")
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if args.local else "slurm")
    tasks = args.gpus_per_node if args.gpus_per_node else 1
    params = {"name": name, "timeout_min": args.time, "nodes": args.nodes, "tasks_per_node": tasks,
              "cpus_per_task": args.cpus_per_task}
    if not args.local:
        params.update(slurm_partition=args.partition, slurm_signal_delay_s=300,
                      slurm_additional_parameters={"requeue": True})
        if args.gpus_per_node:
            params["gpus_per_node"] = args.gpus_per_node
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["preprocess"]:
        # The preprocessing tool submits its own shards as one submitit array; --local means local processes.
        from tools.preprocess import main as preprocess_main

        rest = argv[1:]
        flag = "--submitit-local" if "--local" in rest else "--slurm"
        return preprocess_main([a for a in rest if a != "--local"] + [flag])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from video_st.cli_args import add_config_arguments, parse_config_args

    parser.add_argument("what", choices=["train", "test"])
    add_config_arguments(parser, "key=value config overrides")
    parser.add_argument("--checkpoint", help="test: what to test (default: the run's best checkpoint)")
    parser.add_argument("--local", action="store_true", help="submitit's local executor instead of Slurm")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=0, help="one task per GPU (0: one CPU task)")
    parser.add_argument("--cpus-per-task", type=int, default=None)
    parser.add_argument("--partition")
    parser.add_argument("--time", type=int, default=24 * 60, help="minutes")
    parser.add_argument("--folder", help="submitit logs and pickles (default OUTPUT_DIR/submitit/%%j)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    args = parse_config_args(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from video_st.config import load_config
    from video_st.errors import VideoSTError

    try:
        cfg = load_config(args.config, args.overrides)  # validated here, before anything is queued
    except VideoSTError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = [os.path.abspath(c) for c in args.config] if args.config else None
    executor = _executor(args, os.path.abspath(cfg.output_dir), f"video_st_{args.what}")
    if args.what == "train":
        job = executor.submit(TrainJob(), config, list(args.overrides))
    else:
        job = executor.submit(TestJob(), config, list(args.overrides), args.checkpoint)
    print(f"submitted {args.what} job {job.job_id} ({executor.cluster}); logs in {job.paths.folder}")
    if args.no_wait:
        return 0
    result = job.results()[0]  # rank 0's return value
    if args.what == "test":
        from video_st.engine.report import format_summary

        print(format_summary(result))
        return 0
    return int(result)


if __name__ == "__main__":
    raise SystemExit(main())
