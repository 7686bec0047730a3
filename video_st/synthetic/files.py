"""The files of a generated dataset: videos encoded so that their bytes depend on the seed alone, and the K400 /
SSv2 annotation files (items: anything with ``split`` and ``row``, :class:`video_st.synthetic.items.Item`)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence

import numpy as np

from ..fileio import write_atomic

SPLITS = ("train", "val")
SSV2_FILES = {
    "labels": "something-something-v2-labels.json",
    "train": "something-something-v2-train.json",
    "val": "something-something-v2-validation.json",
}

# Encoder settings. Single-threaded encoders + bit-exact muxing make the bytes a function of the seed alone
# (the Matroska muxer otherwise writes random track UIDs). libx264 needs more: even single-threaded, its
# lookahead / macroblock-tree path gave different bitstreams (and decoded pixels) for the same frames from one
# run to the next here; cpu-independent=1 fixed it in every trial. faststart puts the MP4 index first like web
# downloads, so a truncated MP4 opens and fails on a later frame rather than at open.
X264 = {"codec": "libx264", "format": "mp4",
         "options": {"preset": "veryfast", "crf": "18", "x264-params": "cpu-independent=1"},
         "container_options": {"fflags": "+bitexact", "movflags": "+faststart"}}
VP9 = {"codec": "libvpx-vp9", "format": "webm",
        "options": {"deadline": "realtime", "cpu-used": "8", "crf": "24", "b": "0"},
        "container_options": {"fflags": "+bitexact"}}


def write_k400_annotations(root: str, items: Sequence) -> dict[str, str]:
    files = {}
    for split in SPLITS:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["label", "youtube_id", "time_start", "time_end", "split"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(item.row for item in items if item.split == split)
        files[split] = os.path.join(root, "annotations", f"{split}.csv")
        write_atomic(files[split], out.getvalue())
    return files


def write_ssv2_annotations(root: str, items: Sequence, *, classes: list[str]) -> dict[str, str]:
    files = {key: os.path.join(root, name) for key, name in SSV2_FILES.items()}
    write_atomic(files["labels"], to_json({name: str(i) for i, name in enumerate(classes)}))
    for split in SPLITS:
        write_atomic(files[split], to_json([item.row for item in items if item.split == split]))
    return files


def encode(path: str, frames: np.ndarray, *, fps: int, codec: str, format: str, options: dict[str, str],
            container_options: dict[str, str]) -> None:
    import av  # only needed to write videos; rendering works without it

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    try:
        # The container format is explicit: the ".tmp" name does not tell FFmpeg what to write.
        with av.open(tmp, "w", format=format, options=container_options) as container:
            stream = container.add_stream(codec, rate=fps, options=options)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1  # deterministic output
            for image in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder's delayed frames
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def to_json(value: object) -> str:
    return json.dumps(value, indent=1) + "\n"
