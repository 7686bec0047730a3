"""JPEG frame folders (``img_00001.jpg`` ..., as ``tools/preprocess.py frames`` writes them): one frame, or the
frames of a clip, as uint8 RGB; failures raise :class:`~video_st.data.decode.VideoReadError` as the video readers'."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .decode import VideoReadError, _first_line


def _jpeg_reader():
    """A function path -> uint8 (H, W, 3) RGB. simplejpeg where installed (the ``bench`` extra): the same
    libjpeg-turbo decode as Pillow's, bit-identical pixels (tests/test_fast_formats.py), about 1.5x faster per
    frame because it skips PIL's image object; Pillow otherwise."""
    try:
        import simplejpeg
    except ImportError:
        simplejpeg = None
    if simplejpeg is not None:
        def read(name: str) -> np.ndarray:
            with open(name, "rb") as f:
                return simplejpeg.decode_jpeg(f.read(), colorspace="RGB")
        return read

    from PIL import Image

    def read_pil(name: str) -> np.ndarray:
        with Image.open(name) as img:
            return np.asarray(img.convert("RGB"))
    return read_pil


_read_jpeg = None


def read_jpeg(name: str) -> np.ndarray:
    """One JPEG frame as uint8 (H, W, 3) RGB, by the fastest decoder installed (:func:`_jpeg_reader`)."""
    global _read_jpeg
    if _read_jpeg is None:
        _read_jpeg = _jpeg_reader()
    return _read_jpeg(name)


def read_frame_folder(
    folder: str | os.PathLike, indices: Sequence[int], template: str = "img_{:05d}.jpg", start_index: int = 1
) -> np.ndarray:
    """Frames of a preprocessed folder (``img_00001.jpg`` ...) as uint8 (T, H, W, 3); index 0 is the first file."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise VideoReadError(folder, "no such frame folder")
    out, cache = [], {}
    for i in indices:
        if i not in cache:
            name = os.path.join(folder, template.format(int(i) + start_index))
            try:
                cache[i] = read_jpeg(name)
            except (OSError, ValueError) as err:  # simplejpeg raises ValueError on a corrupt file
                raise VideoReadError(name, f"cannot read frame ({_first_line(err)})") from err
        out.append(cache[i])
    return np.stack(out)
