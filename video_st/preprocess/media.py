"""One video's pixels for the preprocessing jobs: sizes and frame choices, H.264 re-encoding and JPEG frames with
PyAV, and the checks that an existing output is complete (:func:`verify_resized`, :func:`verify_frames`).

Reading failures raise :class:`~video_st.data.decode.VideoReadError` (file and cause), as the readers of
``decode`` do; an output that fails verification raises :class:`InvalidOutput`. No job logic (which files,
temporaries, manifests) lives here: that is ``preprocess``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import numpy as np

from ..data import decode
from ..data.decode import VideoReadError, pyav_stream

FRAME_TEMPLATE = "img_{:05d}.jpg"
# Frame counts from a container index and from decoding may differ by one (a trailing frame with an odd
# timestamp); the verification and the truncation checks allow this much.
FRAME_TOLERANCE = 1


class InvalidOutput(ValueError):
    """An existing output that fails verification (it will be redone)."""


def describe(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters): a reason short enough for a manifest."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


# ------------------------------------------------------------------------------------------ sizes, frames


def target_size(width: int, height: int, *, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` and the aspect ratio kept, both even (H.264 4:2:0
    needs even sides). A video whose short side is already at most ``short_side`` keeps its size (never
    upscaled), rounded down to even sides."""
    scale = min(1.0, short_side / min(width, height))

    def even(x: float) -> int:
        return max(2, 2 * math.floor(x / 2 + 0.5) if scale < 1.0 else 2 * math.floor(x / 2))

    return even(width * scale), even(height * scale)


def frame_indices(num_frames: int, *, source_fps: float, fps: float | None) -> list[int]:
    """Source frames kept at ``fps``: output frame k is source frame floor(k * source_fps / fps), for as long as
    that is a frame (about duration * fps frames). ``fps`` None or not below the source's: every frame (frames
    are never duplicated to raise the rate)."""
    if fps is None or fps >= source_fps:
        return list(range(num_frames))
    step = source_fps / fps
    count = math.ceil(num_frames / step - 1e-9)  # the epsilon keeps 300 / (29.97 / 9.99) from rounding up
    return [math.floor(k * step + 1e-9) for k in range(count)]


def check_count(path: str, *, decoded: int, declared: int) -> None:
    """Fewer frames than the index declares is a truncated source: its output would fail verification forever."""
    if abs(decoded - declared) > FRAME_TOLERANCE:
        problem = "truncated" if decoded < declared else "frame count mismatch"
        raise VideoReadError(path, f"{problem}: decoded {decoded} frames, the container declares {declared}")


# ------------------------------------------------------------------------------------------------- PyAV


def _decoded(path: str, container, stream) -> Iterator:
    count = 0
    try:
        for frame in container.decode(stream):
            yield frame
            count += 1
    except VideoReadError:
        raise
    except Exception as err:  # av.error.* in the middle of the stream
        raise VideoReadError(path, f"undecodable frame {count} ({describe(err)})") from err


def gop_params(gop: int | None, x264_params: str = "") -> str:
    """libx264 options for a fixed keyframe interval: ``keyint`` = ``min-keyint`` = ``gop`` and no scene-cut
    keyframes, so that a random clip never decodes more than ``gop - 1`` frames it does not use (x264's default,
    keyint 250, is what downloaded videos have: up to 8 s of frames decoded for one clip). ``gop`` 1 is
    all-intra (x264 then uses no B-frames). ``gop`` None: x264's defaults. The user's ``x264_params`` follow, so
    they win on a conflict."""
    if gop is None:
        return x264_params
    fixed = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    return f"{fixed}:{x264_params}" if x264_params else fixed


def encode_h264(
    source: str, dest: str, *, size: tuple[int, int], crf: int, preset: str, x264_params: str = "", threads: int = 0,
    gop: int | None = None,
) -> int:
    """Decode every frame of ``source`` and write it, scaled to ``size``, as H.264 without audio, a keyframe every
    ``gop`` frames (:func:`gop_params`). Frames are re-timed at the source's average rate (pts = frame number):
    the count and the mean rate are kept exactly; a variable-rate source becomes constant-rate. Returns the number
    of frames written."""
    import av

    width, height = size
    x264_params = gop_params(gop, x264_params)
    with pyav_stream(source) as (container, stream):
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise VideoReadError(source, "unknown frame rate")
        with av.open(dest, "w", format="mp4") as out:
            options = {"crf": str(crf), "preset": preset, **({"x264-params": x264_params} if x264_params else {})}
            encoder = out.add_stream("libx264", rate=rate, options=options)
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            if threads:
                encoder.codec_context.thread_count = threads
            count = 0
            for frame in _decoded(source, container, stream):
                # Bicubic, like FFmpeg's scale filter; straight to yuv420p, no RGB round trip.
                small = _clean_copy(frame.reformat(width=width, height=height, format="yuv420p",
                                                   interpolation="BICUBIC"))
                small.pts, small.time_base = count, 1 / rate
                out.mux(encoder.encode(small))
                count += 1
            if count == 0:
                raise VideoReadError(source, "no frames")
            out.mux(encoder.encode(None))
    return count


def _clean_copy(frame):
    """The pixels of ``frame`` in a new frame with zeroed line padding and no properties. libx264 reads past the
    visible width into the padding (uninitialised after a scale: the same job gave different files from run to
    run), and it obeys a frame's picture type, which a decoded frame carries: the source's I/P/B pattern would
    be forced onto the new encode."""
    import av

    clean = av.VideoFrame(frame.width, frame.height, frame.format.name)
    for source, dest in zip(frame.planes, clean.planes, strict=True):
        rows = np.asarray(memoryview(dest)).reshape(dest.height, dest.line_size)
        rows[:, dest.width:] = 0
        pixels = np.asarray(memoryview(source)).reshape(source.height, source.line_size)
        rows[:, : dest.width] = pixels[:, : source.width]
    return clean


def write_jpegs(source: str, folder: str, *, indices: Sequence[int], quality: int,
                size: tuple[int, int] | None = None) -> None:
    """Decode ``source`` once, front to back (constant memory), saving the frames at ``indices`` (sorted) as
    ``FRAME_TEMPLATE`` 1, 2, ... in ``folder`` (created; it must not exist), scaled to ``size`` (width, height;
    None: the source's size) with the bicubic scaler the H.264 re-encode uses."""
    os.makedirs(folder)
    position, last = 0, -1
    with pyav_stream(source) as (container, stream):
        for last, frame in enumerate(_decoded(source, container, stream)):
            while position < len(indices) and indices[position] == last:
                if size is not None and (frame.width, frame.height) != tuple(size):
                    frame = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="BICUBIC")
                save_jpeg(frame.to_image(), os.path.join(folder, FRAME_TEMPLATE.format(position + 1)), quality)
                position += 1
            if position == len(indices):
                break  # the rest of the video is not needed
    if position < len(indices):
        raise VideoReadError(source, f"truncated: decoded {last + 1} frames, frame {indices[position]} needed")


def save_jpeg(image, path: str, quality: int) -> None:
    """One frame (a PIL image) as a JPEG at Pillow ``quality``."""
    image.save(path, format="JPEG", quality=quality)


# ----------------------------------------------------------------------------------------------- verify


def verify_resized(path: str, *, expected_frames: int, size: tuple[int, int]) -> int:
    """The output's frame count if it opens in decord, has ``size`` (width, height), ``expected_frames`` +-1
    frames and its last frame decodes; else :class:`InvalidOutput`. Changing --crf does not invalidate."""
    try:
        info = decode.probe(path)
        decode.read_frames(path, [info.num_frames - 1])  # a truncated file with its index in front opens
    except VideoReadError as err:
        raise InvalidOutput(err.cause) from err
    if (info.width, info.height) != tuple(size):
        raise InvalidOutput(f"size {info.width}x{info.height}, expected {size[0]}x{size[1]}")
    if abs(info.num_frames - expected_frames) > FRAME_TOLERANCE:
        raise InvalidOutput(f"{info.num_frames} frames, the source has {expected_frames}")
    return info.num_frames


def verify_frames(folder: str, *, expected: int, size: tuple[int, int] | None = None) -> int:
    """``expected`` if the folder holds exactly img_00001.jpg .. img_{expected}.jpg, each ending with the JPEG
    end marker (a truncated file does not; reading two bytes per file is cheap) and the last one decodes (at
    ``size``, width x height, when given: a rerun at another --short-side redoes the folder)."""
    from PIL import Image

    if not os.path.isdir(folder):
        raise InvalidOutput("not a folder")
    names = sorted(os.listdir(folder))
    wanted = [FRAME_TEMPLATE.format(i) for i in range(1, expected + 1)]
    if names != wanted:
        raise InvalidOutput(f"{len(names)} files, expected {expected} JPEG frames")
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 4 or (f.seek(-2, os.SEEK_END), f.read(2))[1] != b"\xff\xd9":
                raise InvalidOutput(f"{name} is truncated")
    try:
        with Image.open(os.path.join(folder, names[-1])) as img:
            img.load()
            found = img.size
    except (OSError, ValueError, IndexError) as err:
        raise InvalidOutput(f"{names[-1]}: {describe(err)}") from err
    if size is not None and found != tuple(size):
        raise InvalidOutput(f"frames are {found[0]}x{found[1]}, expected {size[0]}x{size[1]}")
    return expected
