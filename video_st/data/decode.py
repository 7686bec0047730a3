"""Reading frames: decord (main), PyAV (fallback and reference); JPEG frame folders are :mod:`video_st.data.frames`.

Every reader returns uint8 ``(T, H, W, C)`` RGB frames for explicit frame indices and reads only those frames;
indices may repeat and come in any order (all views of a test video are one call: one open, one batch read).
Every failure (missing, empty, unreadable container, no video stream, an undecodable frame) raises
:class:`VideoReadError`, which names the file and the cause. FFmpeg's own stderr output is silenced: a corrupt
file otherwise prints hundreds of lines per read. decord's own C++ log lines (``[12:00:00]
/project/src/video/video_reader.cc:86: ERROR opening: ...``), which no switch of the library turns off, are caught
around each decord call and become the cause of the :class:`VideoReadError`, or one log warning per file when the
call still succeeded (see :func:`_decord_stderr`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import VideoSTError

_log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav")
_quieted = False


class VideoReadError(VideoSTError, RuntimeError):
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
    said = _Said()
    try:
        with _decord_stderr(path) as said:
            reader = decord.VideoReader(path, num_threads=num_threads)
    # DECORDError is not a RuntimeError subclass; AssertionError: decord's own "Invalid frame count: 0" check.
    except (RuntimeError, AssertionError, decord.DECORDError) as err:
        if "cannot find video stream" in f"{err} {said.text}":
            raise VideoReadError(path, "no video stream") from err
        # decord's exception says only "Error reading PATH..."; the reason is in the line it logged.
        opening = said.text.removeprefix("ERROR opening: ").removeprefix("ERROR opening ")
        raise VideoReadError(path, f"cannot open ({opening or _first_line(err, path)})") from err
    if len(reader) == 0:
        raise VideoReadError(path, "no frames")
    return reader


def _decord_batch(reader, path: str, indices: list[int]) -> np.ndarray:
    """``reader.get_batch(indices)`` as numpy, decord's log lines caught; errors carry them (``err.decord_said``)."""
    said = _Said()
    try:
        with _decord_stderr(path) as said:
            return reader.get_batch(indices).asnumpy()
    except Exception as err:
        err.decord_said = said.text
        raise


def _read_error(err: BaseException, path: str) -> str:
    """The cause of a failed decord read: its exception's first line, plus what it logged if that says more."""
    message = _first_line(err, path)
    said = getattr(err, "decord_said", "")
    if said and said not in message:
        message = f"{message}; {said}"[:300]
    return message


# decord (dmlc-core logging) writes "[HH:MM:SS] /project/src/video/video_reader.cc:86: " before each line, and its
# exceptions nest such prefixes ("...threaded_decoder.cc:292: [..] ...threaded_decoder.cc:218: Check failed: ...").
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.(?:cc|cpp|cu|h):\d+: ")


def _tidy(text: str, path: str) -> str:
    """decord's text without its time/source-file prefixes and without the path (the error names the file)."""
    text = _DECORD_PREFIX.sub("", text)
    if path:
        text = text.replace(f"{path}, ", "").replace(path, "the file")
    return text.strip()


def _first_line(err: BaseException, path: str = "") -> str:
    text = [line for line in (_tidy(line, path) for line in str(err).splitlines()) if line]
    return text[0][:300] if text else type(err).__name__


class _Said:
    """What decord wrote to stderr during one call: its lines, tidied, repeats dropped, joined by "; "."""

    text = ""


# One capture at a time in a process (the redirect is process-wide); reentrant so a nested decord call works.
_capture_lock = threading.RLock()
_warned: set[str] = set()  # paths already warned about in this process


@contextlib.contextmanager
def _decord_stderr(path: str) -> Iterator[_Said]:
    """Run a decord call with file descriptor 2 sent to a temporary file; yields a :class:`_Said` that holds
    what was written once the block has ended.

    Why: decord logs through dmlc-core's ``LOG(ERROR)``, a raw write to ``std::cerr`` (fd 2) from C++.
    ``decord.logging.set_level`` sets FFmpeg's ``av_log`` level only, and libdecord.so reads no variable that
    would change it (its only ``getenv`` names are DECORD_CACHE_DIR, XDG_CACHE_HOME, HOME, DECORD_NUM_THREADS,
    OMP_NUM_THREADS, DECORD_BIND_THREADS): there is no switch to flip once in ``video_st.compat``. Silencing
    ``std::cerr`` itself would silence every C++ library of the process (torch's warnings too), so only the
    window of each decord call is redirected.

    Trade-off: fd 2 belongs to the process, so anything another thread writes to stderr during the window
    (a decord call: milliseconds) lands in the file too. It is not lost: it comes back as the error's cause or
    through the warning below. Captures in one process take turns (a lock), so threads that decode share one
    window at a time. DataLoader workers are processes, each with its own fd 2.

    After a call that failed, the caller puts the text into its :class:`VideoReadError` (which the datasets report
    once per file) and it is logged here at debug level only; after a call that succeeded but still logged
    something, it is one warning per file per process."""
    said = _Said()
    with _capture_lock:
        try:
            sys.stderr.flush()  # Python's own pending text goes out before the window, not into the file
        except (AttributeError, OSError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all (a daemon): nothing to catch
            yield said
            return
        try:
            sink = tempfile.TemporaryFile()
        except OSError:  # no writable temporary folder: decode anyway, uncaught lines and all
            os.close(saved)
            yield said
            return
        failed = False
        try:
            os.dup2(sink.fileno(), 2)
            yield said
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            raw = sink.read(64 * 1024).decode("utf-8", "replace")
            sink.close()
            _report(said, raw, path, failed=failed)


def _report(said: _Said, raw: str, path: str, *, failed: bool) -> None:
    lines = [line for line in (_tidy(line, path) for line in raw.splitlines()) if line]
    said.text = "; ".join(dict.fromkeys(lines))[:300]
    if not said.text:
        return
    if failed:
        _log.debug("%s: decord said: %s", path, said.text)
    elif path not in _warned:
        _warned.add(path)
        _log.warning("%s: decord: %s", path, said.text)


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
        frame = _decord_batch(reader, path, [0])
    except Exception as err:
        if _DECORD_SIZE_BUG in str(err):
            frame = _read_pyav(path, [0])
        else:
            raise VideoReadError(path, f"undecodable frame 0 ({_read_error(err, path)})") from err
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
            frames = _decord_batch(self._reader, self.path, unique)
        except Exception as err:
            if _DECORD_SIZE_BUG in str(err):
                # decord2 3.4.0 fails to copy out frames of some widths (32, 48, 96, 144 ... pixels: its row
                # stride assumption), on valid files. PyAV decodes the same pixels, so read those with it.
                _log.debug("%s: decord cannot copy frames of this width; reading with PyAV", self.path)
                return _read_pyav(self.path, indices)
            raise VideoReadError(
                self.path, f"undecodable frames in {unique[0]}..{unique[-1]} ({_read_error(err, self.path)})"
            ) from err
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
