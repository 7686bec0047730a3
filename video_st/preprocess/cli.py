"""The options of tools/preprocess.py and how each kind of run is started: in this process, as submitit jobs
(Slurm array or local), or the merge of shard lists. The jobs themselves are :mod:`video_st.preprocess.run`."""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass, field

from ..errors import VideoSTError
from . import jobs, run, submit


@dataclass
class Outcome:
    """What a run ends with; tools/preprocess.py prints it (the summary to stdout, the failures to stderr)."""

    code: int
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _parser(description: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    io = common.add_argument_group("input and output")
    io.add_argument("--input", required=True,
                    help="a folder of videos, a K400 CSV, a 'path label' list, or an SSv2 split JSON")
    io.add_argument("--output", required=True, help="output folder: mirrored tree, manifests, lists")
    io.add_argument("--root", help="folder the annotation's videos are relative to (default: its folder)")
    io.add_argument("--input-format", default="auto", choices=jobs.INPUT_FORMATS,
                    help="auto: a folder, *.csv K400, *.json SSv2, else a 'path label' list")
    io.add_argument("--classes", help="K400: class names, a JSON list or one per line (default: the CSV's, sorted)")
    io.add_argument("--ssv2-labels", help="SSv2: the labels JSON (template -> index); --input is the split JSON")
    io.add_argument("--shard", type=int, default=None, help="this shard (0-based; required with --num-shards > 1)")
    io.add_argument("--num-shards", type=int, default=1)

    job = argparse.ArgumentParser(add_help=False)
    running = job.add_argument_group("running")
    running.add_argument("--workers", type=int, default=1, help="processes per shard (1: in this process)")
    running.add_argument("-v", "--verbose", action="store_true", help="log every video")
    where = running.add_mutually_exclusive_group()
    where.add_argument("--slurm", action="store_true", help="submit all shards as one Slurm array (submitit)")
    where.add_argument("--submitit-local", action="store_true", help="all shards as local submitit processes")
    running.add_argument("--partition", help="Slurm partition")
    running.add_argument("--time", type=int, default=240, help="minutes per shard job")
    running.add_argument("--cpus", type=int, default=None, help="CPUs per shard job")
    running.add_argument("--array-parallelism", type=int, default=16, help="Slurm: shard jobs running at once")
    running.add_argument("--submitit-folder", help="submitit logs and pickles (default: OUTPUT/.submitit)")
    running.add_argument("--wait-timeout", type=float, default=None,
                     help="seconds to wait for the shard jobs (default: --time per wave of shards + 10 min)")
    running.add_argument("--no-wait", action="store_true", help="submit and return; the last shard merges the lists")

    parser = argparse.ArgumentParser(prog="preprocess.py", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="subcommand", required=True)
    sub.add_parser("scan", parents=[common, job], help="decode-check every video; write the invalid list")
    resize = sub.add_parser("resize", parents=[common, job], help="re-encode: H.264, short side N, no audio")
    resize.add_argument("--short-side", type=int, default=None, help="default 320")
    resize.add_argument("--gop", type=int, default=None,
                        help="a keyframe every N frames (8: fast random clips; default: x264's 250)")
    resize.add_argument("--all-intra", dest="gop", action="store_const", const=1, help="every frame a keyframe")
    resize.add_argument("--crf", type=int, default=23)
    resize.add_argument("--preset", default="medium", help="libx264 preset")
    resize.add_argument("--x264-params", default="", help="extra libx264 options, e.g. 'mbtree=0'")
    resize.add_argument("--threads", type=int, default=0, help="encoder threads per video (0: libx264's choice)")
    frames = sub.add_parser("frames", parents=[common, job], help="JPEG frames img_00001.jpg ... + frame list")
    frames.add_argument("--fps", type=float, default=None, help="frames per second (default: every frame)")
    frames.add_argument("--short-side", type=int, default=None, help="scale frames to this short side "
                        "(default: the source's size)")
    frames.add_argument("--quality", type=int, default=90, help="JPEG quality (Pillow)")
    merge = sub.add_parser("merge", parents=[common], help="merge the shard lists of a sharded scan or frames job")
    merge.add_argument("kind", choices=["scan", "frames"])
    return parser


def _spec(args: argparse.Namespace) -> jobs.JobSpec:
    subcommand = args.kind if args.subcommand == "merge" else args.subcommand
    options = ("short_side", "crf", "preset", "x264_params", "gop", "threads", "fps", "quality")
    extra = {name: getattr(args, name) for name in options if hasattr(args, name)}
    absolute = {name: os.path.abspath(getattr(args, name)) if getattr(args, name) else None
                for name in ("input", "output", "root", "classes", "ssv2_labels")}
    return jobs.JobSpec(subcommand=subcommand, input_format=args.input_format, **absolute, **extra)


def _summary_line(spec: jobs.JobSpec, summaries: list[run.ShardSummary], video_list: str | None) -> str:
    ok, failed, skipped = (sum(getattr(s, name) for s in summaries) for name in ("ok", "failed", "skipped"))
    shards = ", ".join(str(s.shard) for s in summaries)
    where = f"manifest {summaries[0].manifest}" if len(summaries) == 1 else f"manifests in {spec.output}"
    text = f"{spec.subcommand}: ok {ok} / failed {failed} / skipped {skipped} (shards {shards}); {where}"
    return text + (f"; list {video_list}" if video_list else "")


def _run_here(spec: jobs.JobSpec, args: argparse.Namespace) -> Outcome:
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: the process pool forks after the bar exists
    bar = None

    def progress(record: run.Record, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="video", desc=spec.subcommand, disable=None)  # None: off unless a TTY
        bar.update(1)
        bar.set_postfix_str(f"last {record.status}", refresh=False)

    try:
        summary = run.run_shard(spec, shard=args.shard or 0, num_shards=args.num_shards, workers=args.workers,
                               progress=progress)
    finally:
        if bar is not None:
            bar.close()
    return Outcome(0, [_summary_line(spec, [summary], summary.video_list)])


def _submit(spec: jobs.JobSpec, args: argparse.Namespace) -> Outcome:
    waves = math.ceil(args.num_shards / max(1, args.array_parallelism)) if args.slurm else 1
    timeout = args.wait_timeout if args.wait_timeout is not None else (args.time * 60 * waves + 600)
    folder = args.submitit_folder or os.path.join(spec.output, ".submitit", "%j")

    def on_done(shard: int, summary: run.ShardSummary | None, error: str | None) -> None:
        logging.getLogger("preprocess").info("shard %d: %s", shard, error or f"ok {summary.ok} / failed "
                                             f"{summary.failed} / skipped {summary.skipped}")

    result = submit.submit(
        spec, num_shards=args.num_shards, folder=folder, cluster="slurm" if args.slurm else "local",
        workers=args.workers, partition=args.partition, time_min=args.time, cpus=args.cpus,
        array_parallelism=args.array_parallelism, timeout_s=timeout, on_done=on_done,
        poll_s=10.0 if args.slurm else 0.5,  # Slurm: each poll asks sacct; local: a cheap process poll
        wait_for_results=not args.no_wait,
    )
    if args.no_wait:
        return Outcome(0, [f"{spec.subcommand}: submitted {args.num_shards} shards as {', '.join(result.job_ids)}"])
    video_list = None
    if not result.errors:
        video_list = run.merge(spec, num_shards=args.num_shards)
    outcome = Outcome(1 if result.errors else 0)
    if result.summaries:
        outcome.lines.append(_summary_line(spec, result.summaries, video_list))
    outcome.errors += [f"shard {shard}: no result: {error}" for shard, error in sorted(result.errors.items())]
    if result.errors:
        outcome.errors.append("re-run the same command (finished videos are skipped after verification)")
    return outcome


def main(argv: list[str] | None, *, description: str) -> Outcome:
    """``preprocess.py SUBCOMMAND OPTIONS`` (tools/preprocess.py is the door; its docstring is the help)."""
    parser = _parser(description)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    submitting = getattr(args, "slurm", False) or getattr(args, "submitit_local", False)
    if args.num_shards < 1:
        parser.error("--num-shards must be at least 1")
    if submitting and args.shard is not None:
        parser.error("--slurm / --submitit-local run every shard: leave out --shard")
    if args.subcommand == "merge" and args.num_shards == 1:
        # an unsharded job writes its list itself: nothing to merge, and "merged" would name a list nobody joined
        parser.error("merge joins the lists of a sharded job: give --num-shards N, the N its shards ran with")
    if args.subcommand != "merge" and not submitting and args.num_shards > 1 and args.shard is None:
        parser.error("--shard is required with --num-shards > 1 (or use --slurm / --submitit-local)")
    try:
        spec = _spec(args)
        if args.subcommand == "merge":
            return Outcome(0, [f"merged: {run.merge(spec, num_shards=args.num_shards)}"])
        return _submit(spec, args) if submitting else _run_here(spec, args)
    except VideoSTError as err:  # ConfigError, AnnotationError, MergeError ...
        parser.exit(2, f"{parser.prog}: error: {err}\n")

