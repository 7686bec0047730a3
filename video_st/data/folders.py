"""Videos laid out as folders: every video below a folder (unlabelled: predict, preprocessing) and one folder per
class (``data.dataset=folder``: ``ROOT/SPLIT/CLASS/*.mp4``, the class names the folder names). No torch."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from .annotations import VIDEO_EXTENSIONS, AnnotationError, VideoRecord, match_classes

_log = logging.getLogger(__name__)


def read_video_folder(folder: str | os.PathLike) -> list[VideoRecord]:
    """Every video file below ``folder`` (recursively, sorted), label -1."""
    folder = os.fspath(folder)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found += [os.path.join(dirpath, n) for n in filenames if n.lower().endswith(VIDEO_EXTENSIONS) and ".tmp." not in n]
    records = []
    for path in sorted(found):
        rel = os.path.relpath(path, folder)
        records.append(VideoRecord(path, -1, os.path.splitext(rel)[0], rel=rel))
    return records


def read_class_folders(folder: str | os.PathLike, root: str | os.PathLike = "", *,
                       class_names: Sequence[str] | None = None) -> tuple[list[VideoRecord], list[str]]:
    """One folder per class (``FOLDER/CLASS/*.mp4``, videos found recursively below each class folder) -> records
    and class names (``data.dataset=folder``).

    Without ``class_names`` (training) the classes are the class folders' names sorted, empty folders included (a
    class the split has no video of is still a class; a warning says so). With ``class_names`` (val/test: the
    model's) records are matched to them by name (:func:`~video_st.data.annotations.match_classes`) and ``class_names`` is returned; a folder
    the model does not know is an error only when it holds videos. Hidden folders (``.name``) are skipped; a video
    directly in ``folder`` (in no class folder) is an ``AnnotationError``. ``rel`` is relative to ``root``
    when the folder lies inside it (where a preprocessed copy goes), else to ``folder``."""
    folder, root = os.fspath(folder), os.fspath(root)
    if not os.path.isdir(folder):
        raise AnnotationError(folder, "-", "no such folder (data.dataset=folder: one sub-folder per class)")
    entries = sorted(os.listdir(folder))
    stray = [n for n in entries if os.path.isfile(os.path.join(folder, n)) and n.lower().endswith(VIDEO_EXTENSIONS)]
    if stray:
        raise AnnotationError(folder, "-", f"{len(stray)} videos are in no class folder (first: {stray[0]}); "
                              "data.dataset=folder expects FOLDER/CLASS/video files")
    names = [n for n in entries if not n.startswith(".") and os.path.isdir(os.path.join(folder, n))]
    if not names:
        raise AnnotationError(folder, "-", "no class folders (data.dataset=folder expects FOLDER/CLASS/video files)")
    base = root if root and not os.path.relpath(folder, root).startswith("..") else folder
    records, empty = [], []
    for label, name in enumerate(names):
        found = read_video_folder(os.path.join(folder, name))
        if not found:
            empty.append(name)
        records += [VideoRecord(r.path, label, os.path.join(name, r.video_id),
                                rel=os.path.relpath(r.path, base)) for r in found]
    if empty:
        _log.warning("%s: %d class folders hold no video (%s)", folder, len(empty), ", ".join(empty[:5]))
    if class_names is None:
        return records, names
    return match_classes(records, names, class_names, source=folder, lines=[r.video_id for r in records]), \
        list(class_names)
