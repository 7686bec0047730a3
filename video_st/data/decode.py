"""Reading frames: decord (main), PyAV (fallback and reference), JPEG frame folders.

Every reader returns uint8 ``(T, H, W, C)`` RGB frames for explicit frame indices and reads only those frames;
indices may repeat and come in any order (all views of a test video are one call: one open, one batch read).
Every failure (missing, empty, unreadable container, no video stream, an undecodable frame) raises
:class:`VideoReadError`, which names the file and the cause. FFmpeg's own stderr output is silenced: a corrupt
file otherwise prints hundreds of lines per read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav")
_quieted = False


class VideoReadError(RuntimeError):
    """A video (or frame folder) that cannot be read; ``path`` and ``cause`` are kept for reports."""

    def __init__(self, path: str | os.PathLike, cause: str) -> None:
        self.path, self.cause = os.fspath(path), cause
        super().__init__(f"{self.path}: {cause}")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def _quiet() -> None:
    global _quieted
    if _quieted:
        return
    try:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
    except ImportError:
        pass
    try:
        import av

        av.logging.set_level(av.logging.PANIC)
    except ImportError:
        pass
    _quieted = True


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoReadError(path, "no such file")
    if os.path.isdir(path):
        raise VideoReadError(path, "is a folder, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "empty file (0 bytes)")


def _decord_reader(path: str, num_threads: int):
    import decord

    _quiet()
    _check_file(path)
    try:
        reader = decord.VideoReader(path, num_threads=num_threads)
    except (RuntimeError, decord.DECORDError) as err:  # DECORDError is not a RuntimeError subclass
        if "cannot find video stream" in str(err):
            raise VideoReadError(path, "no video stream") from err
        raise VideoReadError(path, f"cannot open ({_first_line(err)})") from err
    if len(reader) == 0:
        raise VideoReadError(path, "no frames")
    return reader


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def probe(path: str | os.PathLike, backend: str = "decord", num_threads: int = 1) -> VideoInfo:
    """Frame count, frame rate and size, from the container index (decord) or by decoding (PyAV, slow)."""
    path = os.fspath(path)
    if backend == "decord":
        reader = _decord_reader(path, num_threads)
        height, width = _decord_size(reader, path)
        return VideoInfo(num_frames=len(reader), fps=float(reader.get_avg_fps()), height=height, width=width)
    if backend == "pyav":
        with pyav_stream(path) as (container, stream):
            count = 0
            try:
                for _ in container.decode(stream):
                    count += 1
            except Exception as err:
                raise VideoReadError(path, f"undecodable frame {count} ({_first_line(err)})") from err
            if count == 0:
                raise VideoReadError(path, "no frames")
            return VideoInfo(count, float(stream.average_rate or 0.0), stream.codec_context.height, stream.codec_context.width)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _decord_size(reader, path: str) -> tuple[int, int]:
    try:
        frame = reader.get_batch([0]).asnumpy()
    except Exception as err:
        if _DECORD_SIZE_BUG in str(err):
            frame = _read_pyav(path, [0])
        else:
            raise VideoReadError(path, f"undecodable frame 0 ({_first_line(err)})") from err
    return int(frame.shape[1]), int(frame.shape[2])


class VideoSource:
    """One opened video: ``num_frames`` from the container index and ``read(indices)``; open once, read all
    views. For PyAV the frame count needs a decode pass (done lazily, once)."""

    def __init__(self, path: str | os.PathLike, backend: str = "decord", num_threads: int = 1) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.path, self.backend = os.fspath(path), backend
        self._reader = _decord_reader(self.path, num_threads) if backend == "decord" else None
        if backend == "pyav":
            _check_file(self.path)
        self._num_frames: int | None = len(self._reader) if self._reader is not None else None

    @property
    def num_frames(self) -> int:
        if self._num_frames is None:
            self._num_frames = probe(self.path, backend="pyav").num_frames
        return self._num_frames

    def read(self, indices: Sequence[int]) -> np.ndarray:
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("no frame indices given")
        if self._reader is None:
            return _read_pyav(self.path, indices)
        _check_range(self.path, indices, len(self._reader))
        unique = sorted(set(indices))
        try:
            frames = self._reader.get_batch(unique).asnumpy()
        except Exception as err:
            if _DECORD_SIZE_BUG in str(err):
                # decord2 3.4.0 fails to copy out frames of some widths (32, 48, 96, 144 ... pixels: its row
                # stride assumption), on valid files. PyAV decodes the same pixels, so read those with it.
                _log.debug("%s: decord cannot copy frames of this width; reading with PyAV", self.path)
                return _read_pyav(self.path, indices)
            raise VideoReadError(self.path, f"undecodable frames in {unique[0]}..{unique[-1]} ({_first_line(err)})") from err
        return _reorder(frames, unique, indices)


_DECORD_SIZE_BUG = "from_size == to_size"


def open_video(path: str | os.PathLike, backend: str = "decord", num_threads: int = 1) -> VideoSource:
    return VideoSource(path, backend=backend, num_threads=num_threads)


def read_frames(
    path: str | os.PathLike, indices: Sequence[int], backend: str = "decord", num_threads: int = 1
) -> np.ndarray:
    """The frames at ``indices`` as uint8 (len(indices), H, W, 3); indices must be in [0, num_frames)."""
    return open_video(path, backend=backend, num_threads=num_threads).read(indices)


def _check_range(path: str, indices: Sequence[int], num_frames: int) -> None:
    bad = [i for i in indices if not 0 <= i < num_frames]
    if bad:
        raise VideoReadError(path, f"frame indices {bad[:5]} outside the video's {num_frames} frames")


def _reorder(frames: np.ndarray, unique: list[int], indices: list[int]) -> np.ndarray:
    if unique == indices:
        return frames
    position = {index: row for row, index in enumerate(unique)}
    return frames[[position[i] for i in indices]]


class pyav_stream:
    """Context manager: (container, first video stream) with errors turned into VideoReadError; the one place
    PyAV opens a video (decoding here, and the preprocessing jobs' re-encoding)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self):
        import av

        _quiet()
        _check_file(self.path)
        try:
            self.container = av.open(self.path)
        except Exception as err:  # av.error.InvalidDataError and friends
            raise VideoReadError(self.path, f"cannot open ({_first_line(err)})") from err
        if not self.container.streams.video:
            self.container.close()
            raise VideoReadError(self.path, "no video stream")
        # No frame threading ("AUTO"): after a decode error on a corrupt stream, FFmpeg's frame threads can
        # deadlock when the codec context is freed, hanging the process (seen here on bit-flipped H.264, 2 runs in 5).
        stream = self.container.streams.video[0]
        return self.container, stream

    def __exit__(self, *exc) -> None:
        self.container.close()


def _read_pyav(path: str, indices: list[int]) -> np.ndarray:
    # Decodes from the start up to the last needed frame: exact for any container and frame rate (seeking by
    # timestamp is not frame-exact for variable-rate or B-frame streams). The fallback and the reference.
    wanted = set(indices)
    last = max(indices)
    got: dict[int, np.ndarray] = {}
    with pyav_stream(path) as (container, stream):
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    got[index] = frame.to_ndarray(format="rgb24")
                if index >= last:
                    break
        except Exception as err:
            raise VideoReadError(path, f"undecodable frame {index + 1} ({_first_line(err)})") from err
    missing = sorted(wanted - set(got))
    if missing:
        raise VideoReadError(path, f"frame indices {missing[:5]} outside the video's {index + 1} frames")
    return np.stack([got[i] for i in indices])


def read_frame_folder(
    folder: str | os.PathLike, indices: Sequence[int], template: str = "img_{:05d}.jpg", start_index: int = 1
) -> np.ndarray:
    """Frames of a preprocessed folder (``img_00001.jpg`` ...) as uint8 (T, H, W, 3); index 0 is the first file."""
    from PIL import Image

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise VideoReadError(folder, "no such frame folder")
    out, cache = [], {}
    for i in indices:
        if i not in cache:
            name = os.path.join(folder, template.format(int(i) + start_index))
            try:
                with Image.open(name) as img:
                    cache[i] = np.asarray(img.convert("RGB"))
            except (OSError, ValueError) as err:
                raise VideoReadError(name, f"cannot read frame ({_first_line(err)})") from err
        out.append(cache[i])
    return np.stack(out)
