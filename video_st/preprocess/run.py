"""Preprocessing jobs over whole datasets: corruption scan, resize/re-encode, JPEG frame extraction.

One video is one unit of work (:func:`process_video`); a shard is every n-th video of the input list
(:func:`run_shard`); a job is all shards, run in this process, in a local process pool (``workers``), or as one
Slurm (or submitit-local) array (:func:`video_st.preprocess.submit.submit`). The same :func:`run_shard` runs in
every case. The job's definition, video list, sharding and paths are :mod:`video_st.preprocess.jobs`; the pixels
(encoding, JPEGs, output verification) are :mod:`video_st.preprocess.media`; temporaries and their clean-up
:mod:`video_st.preprocess.staging`; the crash-tolerant pool :mod:`video_st.preprocess.pool`; the input lists come
from :mod:`video_st.data.annotations`, the one parser of each annotation format.

Subcommands (``JobSpec.subcommand``):

- ``scan``: the video opens in decord (the training reader) and every frame decodes in PyAV; a video whose
  decoded frames fall short of the count decord declares is truncated. Output: the manifest and the invalid list.
- ``resize``: H.264 (libx264, yuv420p, ``crf``, ``preset``), short side ``short_side`` (default 320; aspect
  kept, both sides even), a keyframe every ``gop`` frames (1: all-intra; default: x264's 250, which is what
  downloaded videos have and what makes random clips slow to decode: docs/data.md), no audio, every frame at the
  source's average frame rate. Output ``OUTPUT/<rel path with .mp4>``.
  A video whose short side is already at most ``short_side`` is re-encoded at its own size (never upscaled,
  never copied: a copy would keep its audio and codec, and the output set would not be uniformly H.264).
  Frames reach the encoder without the decoded frames' properties: libx264 obeys a frame's picture type, so the
  source's I/P/B pattern would otherwise be forced onto the new encode.
- ``frames``: ``img_00001.jpg`` ... (1-based) at ``fps`` (None: every frame), short side ``short_side`` (None:
  the source's size; scaled as ``resize`` scales), Pillow ``quality``, one folder per
  video ``OUTPUT/<rel path without extension>/``, and the frame list ``frame_dir num_frames label`` (frame_dir
  relative to OUTPUT; label from the annotation, -1 for a folder or an unlabelled split), which
  ``lists.read_frame_list`` reads.

Inputs (``input_format``; ``auto``: a folder, ``*.csv`` K400, ``*.json`` SSv2, anything else a list):

- ``folder``: every video below it (``folders.read_video_folder``: recursive, sorted by relative path).
- ``k400``: a Kinetics CSV (``annotations.read_k400_csv``; file order). Files are ``ROOT/NAME``,
  ``ROOT/SPLIT/NAME`` or ``ROOT/SPLIT/LABEL/NAME``, the first that exists, else the video is ``failed``
  "missing". Labels index the CSV's sorted class names, or ``classes`` (a JSON list or one name per line).
- ``list``: ``path label`` lines (``lists.read_path_label_list``; file order).
- ``ssv2``: Something-Something-v2, ``input`` the split JSON and ``ssv2_labels`` the labels JSON
  (``annotations.read_ssv2``); videos ``ROOT/{id}{ext}``, ext that of most videos in ROOT, .webm if none.

Annotation videos are relative to ``root`` (default: the annotation's folder) and mirrored under OUTPUT by that
relative path (``VideoRecord.rel``). A line that does not parse is an ``annotations.AnnotationError``
(``file:line: reason``); a job that cannot run as asked is a ``video_st.errors.ConfigError``.

Files under OUTPUT (``n`` = number of shards; with n = 1 the ``.shard{i}of{n}`` part is left out):

- ``manifest.{subcommand}.shard{i}of{n}.jsonl``: one JSON line per video, written and flushed as each video
  finishes (a killed shard keeps what it finished): ``{"input", "output", "status": "ok"|"failed"|"skipped",
  "reason", "num_frames", "seconds"}``. A shard rewrites its manifest on every run, so it always describes the
  latest run; earlier finished outputs appear there as ``skipped``.
- ``frames.shard{i}of{n}.txt`` (frames) / ``invalid.shard{i}of{n}.txt`` (scan): the shard's list, written
  once the shard is done. When every shard's list exists, the shard that finishes last writes the merged
  ``frames.txt`` / ``invalid.txt`` in input order (:func:`merge`; also a CLI step). Two shards finishing at once
  both write the same merged file atomically, so the race is harmless.
- ``classes.json`` (frames, when the input names its classes: a K400 CSV, an SSv2 split): the class names the
  frame list's labels index, in index order, so that ``data.dataset=frames data.labels=OUTPUT/classes.json``
  matches the frames to a model by class name.

Resuming: a finished output is skipped only after it is verified (``media.verify_resized``,
``media.verify_frames``), otherwise it is redone. Outputs are written under a temporary name of their own
attempt in the same folder (``name.tmp.HOST-PID-TOKEN.mp4``, ``name.tmp.HOST-PID-TOKEN/``: unique per attempt,
so two attempts never write, remove or rename each other's file; the same folder, so the final rename is
atomic) and renamed when complete, so a killed job never leaves a half-written file under a final name. A
temporary is never an output: the ``.tmp.`` in its name keeps it out of ``folders.read_video_folder`` and
out of every check here, which look only at final names. When a video comes up again, the temporaries of its
earlier attempts are removed, except those of a process still running on this host (never a sweep of the
tree: another shard may be writing its temporaries right now). Pool workers die with the job's process
(:mod:`video_st.preprocess.pool`), so after a kill nothing is left writing.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError, VideoSTError
from ..fileio import atomic_open
from ..data import decode
from ..data.decode import VideoReadError
from . import media, staging
from .jobs import (CLASSES_FILE, RESIZE_SHORT_SIDE, JobSpec, VideoItem, check_shard, class_names, list_path,
                   manifest_path, output_path, plan, shard_items)
from .media import InvalidOutput
from .pool import imap_isolating

_log = logging.getLogger(__name__)


# Errors of the machine, not of the video: every following video would fail the same way, so the shard stops.
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class MergeError(VideoSTError, RuntimeError):
    """Shard lists missing: the merged list would leave videos out."""


@dataclass(frozen=True)
class Record:
    """One manifest line (``index`` and ``label`` stay out of the manifest; they order and fill the lists)."""

    input: str
    output: str | None
    status: str
    reason: str | None
    num_frames: int | None
    seconds: float
    index: int = field(default=-1, compare=False)
    label: int = field(default=-1, compare=False)

    def to_json(self) -> str:
        row = asdict(self)
        del row["index"], row["label"]
        return json.dumps(row)


@dataclass(frozen=True)
class ShardSummary:
    shard: int
    num_shards: int
    ok: int
    failed: int
    skipped: int
    manifest: str
    video_list: str | None  # the merged list when this shard wrote it, else the shard's list (None for resize)
    seconds: float

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.skipped


# ------------------------------------------------------------------------------------------- one video


def process_video(item: VideoItem, *, spec: JobSpec) -> Record:
    """Run one video through the job's subcommand. A bad video never raises: it becomes a ``failed`` record with
    the reason (``VideoReadError.cause`` or the exception); only machine errors (disk full, read-only) raise."""
    start = time.perf_counter()
    output = output_path(item, spec=spec)
    try:
        status, reason, count = _STEPS[spec.subcommand](item, output, spec)
    except VideoReadError as err:
        status, reason, count = "failed", err.cause, None
    except Exception as err:  # anything else a strange file provokes (encoder, Pillow): recorded, job goes on
        if isinstance(err, OSError) and err.errno in _FATAL_ERRNOS:
            raise
        _log.warning("%s: unexpected error", item.source, exc_info=True)
        status, reason, count = "failed", media.describe(err), None
    if status == "failed":
        _log.warning("failed: %s: %s", item.source, reason)
    return Record(item.source, output, status, reason, count, round(time.perf_counter() - start, 3),
                  index=item.index, label=item.label)


def _scan(item: VideoItem, output: str | None, spec: JobSpec) -> tuple[str, str | None, int | None]:
    if not os.path.exists(item.source):
        return "failed", "missing", None
    declared = decode.probe(item.source).num_frames  # opens in decord, the reader training uses
    decoded = decode.probe(item.source, backend="pyav").num_frames  # decodes every frame
    if decoded < declared - media.FRAME_TOLERANCE:
        return "failed", f"truncated: decoded {decoded} of the {declared} frames the container declares", decoded
    return "ok", None, decoded


def _resize(item: VideoItem, output: str, spec: JobSpec) -> tuple[str, str | None, int | None]:
    staging.remove_stale_temporaries(output)  # left by killed attempts
    if not os.path.exists(item.source):
        return "failed", "missing", None  # an existing output is left alone: the source may have been archived
    source = decode.probe(item.source)  # also silences FFmpeg's stderr before PyAV is used below
    size = media.target_size(source.width, source.height, short_side=spec.short_side or RESIZE_SHORT_SIDE)
    if os.path.lexists(output):
        try:
            return "skipped", None, media.verify_resized(output, expected_frames=source.num_frames, size=size)
        except InvalidOutput as err:
            _log.info("redoing %s: %s", output, err)
    with staging.staged(output) as tmp:
        count = media.encode_h264(item.source, tmp, size=size, crf=spec.crf, preset=spec.preset,
                                  x264_params=spec.x264_params, threads=spec.threads, gop=spec.gop)
        media.check_count(item.source, decoded=count, declared=source.num_frames)
    return "ok", None, count


def _frames(item: VideoItem, output: str, spec: JobSpec) -> tuple[str, str | None, int | None]:
    staging.remove_stale_temporaries(output)
    if not os.path.exists(item.source):
        return "failed", "missing", None
    # Which frames, and so how many, come from decord's view of the source (count, average rate): the same
    # numbers the verification of a later run recomputes, and the frames the video reader would index.
    source = decode.probe(item.source)
    if spec.fps is not None and source.fps <= 0:
        raise VideoReadError(item.source, "unknown frame rate: cannot resample to --fps")
    indices = media.frame_indices(source.num_frames, source_fps=source.fps, fps=spec.fps)
    size = None if spec.short_side is None else media.target_size(source.width, source.height,
                                                                  short_side=spec.short_side)
    if os.path.lexists(output):
        try:
            return "skipped", None, media.verify_frames(output, expected=len(indices), size=size)
        except InvalidOutput as err:
            _log.info("redoing %s: %s", output, err)
    with staging.staged(output) as tmp:
        media.write_jpegs(item.source, tmp, indices=indices, quality=spec.quality, size=size)
    return "ok", None, len(indices)


_STEPS = {"scan": _scan, "resize": _resize, "frames": _frames}


# ------------------------------------------------------------------------------------------------ shards

Progress = Callable[[Record, int, int], None]  # (record, videos done, videos in the shard)


def run_shard(
    spec: JobSpec, *, shard: int = 0, num_shards: int = 1, workers: int = 1, progress: Progress | None = None,
    merge_when_complete: bool = True,
) -> ShardSummary:
    """Process one shard: manifest line by line, then the shard's list, then (n > 1, every shard's list there)
    the merged list. ``workers`` > 1: a process pool. ``progress`` is called after each manifest line."""
    check_shard(shard=shard, num_shards=num_shards)
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    start = time.perf_counter()
    items = shard_items(plan(spec), shard=shard, num_shards=num_shards)
    output = os.path.abspath(spec.output)
    os.makedirs(output, exist_ok=True)
    shard_list = list_path(output, spec.subcommand, shard=shard, num_shards=num_shards)
    if shard_list:
        staging.remove(shard_list)  # until this run finishes, a merge must not take the previous run's list
    manifest = manifest_path(output, spec.subcommand, shard=shard, num_shards=num_shards)
    _log.info("%s shard %d/%d: %d videos -> %s", spec.subcommand, shard, num_shards, len(items), manifest)
    records = []
    with open(manifest, "w", encoding="utf-8") as f:
        for record in _process_all(items, spec=spec, workers=workers):
            f.write(record.to_json() + "\n")
            f.flush()  # a killed job keeps every line it finished
            records.append(record)
            if progress is not None:
                progress(record, len(records), len(items))
    written = _write_shard_list(records, spec=spec, path=shard_list)
    if written and num_shards > 1 and merge_when_complete:
        written = _merge_if_complete(spec, num_shards=num_shards) or written
    counts = {status: sum(r.status == status for r in records) for status in ("ok", "failed", "skipped")}
    return ShardSummary(shard, num_shards, counts["ok"], counts["failed"], counts["skipped"], manifest, written,
                        round(time.perf_counter() - start, 3))


def _process_all(items: list[VideoItem], *, spec: JobSpec, workers: int) -> Iterator[Record]:
    """Records in this process (in input order) or in a pool of ``workers`` processes (completion order; a
    video whose worker dies becomes a ``failed`` record, see :func:`video_st.preprocess.pool.imap_isolating`)."""
    if workers == 1:
        return (process_video(item, spec=spec) for item in items)
    return imap_isolating(functools.partial(process_video, spec=spec), items, workers=workers,
                          on_crash=functools.partial(_crashed, spec=spec))


def _crashed(item: VideoItem, seconds: float, *, spec: JobSpec) -> Record:
    reason = "worker process died while processing it (decoder crash or out of memory)"
    _log.warning("failed: %s: %s", item.source, reason)
    return Record(item.source, output_path(item, spec=spec), "failed", reason, None, round(seconds, 3),
                  index=item.index, label=item.label)


def _write_shard_list(records: list[Record], *, spec: JobSpec, path: str | None) -> str | None:
    if path is None:
        return None
    ordered = sorted(records, key=lambda r: r.index)
    if spec.subcommand == "frames":
        lines = [_frame_line(r, output=os.path.abspath(spec.output)) for r in ordered if r.status != "failed"]
        names = class_names(spec)
        if names is not None:  # what the labels index: data.labels=OUTPUT/classes.json matches them by name
            with atomic_open(os.path.join(os.path.abspath(spec.output), CLASSES_FILE)) as f:
                json.dump(names, f, indent=0)
    else:
        lines = [r.input for r in ordered if r.status == "failed"]
    _write_lines(path, lines)
    return path


def _frame_line(record: Record, *, output: str) -> str:
    frame_dir = os.path.relpath(record.output, output).replace(os.sep, "/")
    return f"{frame_dir} {record.num_frames} {record.label}"


def _write_lines(path: str, lines: Iterable[str]) -> None:
    with atomic_open(path) as f:
        f.writelines(line + "\n" for line in lines)


# ------------------------------------------------------------------------------------------------- merge


def merge(spec: JobSpec, *, num_shards: int) -> str | None:
    """Concatenate the shard lists (frames: frame list, scan: invalid list) in input order into the job's list.
    Returns its path (None for resize, which has no list). :class:`MergeError` if a shard's list is missing."""
    final = list_path(os.path.abspath(spec.output), spec.subcommand)
    if final is None or num_shards == 1:
        return final if final and os.path.exists(final) else None
    paths = [list_path(os.path.abspath(spec.output), spec.subcommand, shard=i, num_shards=num_shards)
             for i in range(num_shards)]
    missing = [i for i, path in enumerate(paths) if not os.path.exists(path)]
    if missing:
        raise MergeError(f"shard lists missing for shards {missing} of {num_shards} (not run, or not finished)")
    by_key = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    by_key[_list_key(line, subcommand=spec.subcommand)] = line.rstrip("\n")
    keys = [_item_key(item, spec=spec) for item in plan(spec)]
    _write_lines(final, [by_key[key] for key in keys if key in by_key])
    _log.info("merged %d shard lists into %s", num_shards, final)
    return final


def _list_key(line: str, *, subcommand: str) -> str:
    # frame list: the frame_dir (a path may hold spaces: the last two fields are numbers); invalid list: the path
    return line.rstrip("\n").rsplit(" ", 2)[0] if subcommand == "frames" else line.rstrip("\n")


def _item_key(item: VideoItem, *, spec: JobSpec) -> str:
    if spec.subcommand == "frames":
        return os.path.relpath(output_path(item, spec=spec), os.path.abspath(spec.output)).replace(os.sep, "/")
    return item.source


def _merge_if_complete(spec: JobSpec, *, num_shards: int) -> str | None:
    try:
        return merge(spec, num_shards=num_shards)
    except MergeError:
        return None  # other shards still running: the last one to finish merges
