"""``path label`` lists (VideoMAE's format) and ``frame_dir num_frames label`` lists (frame folders, as
``tools/preprocess.py frames`` writes them) -> video records, labels as class indices or class names, classes
matched by name (:func:`video_st.data.annotations.match_classes`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace

from .annotations import (AnnotationError, VideoRecord, _inside_root, _parse_int, load_class_names,
                          match_classes)


def _lines(path: str) -> Iterable[tuple[int, str]]:
    """(1-based line number, stripped text) of every non-blank line."""
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if text.strip():
                yield number, text.strip()


def _list_rows(path: str, root: str, frames: bool) -> Iterable[tuple[int, VideoRecord, str]]:
    """(line, record labelled 0, label text) of a ``path label`` or ``frame_dir num_frames label`` list. A line
    splits at its last tabs when it has enough of them (so a class name may hold spaces), else at its last blanks."""
    for line, text in _lines(path):
        fields = 3 if frames else 2
        parts = [p.strip() for p in text.rsplit("\t", fields - 1)]
        if len(parts) != fields or not all(parts):
            parts = text.rsplit(maxsplit=fields - 1)
        if len(parts) != fields:
            raise AnnotationError(path, line, f"expected {'frame_dir num_frames label' if frames else 'path label'}, "
                                  f"got {text!r}")
        if frames:
            count = _parse_int(parts[1], path=path, line=line, what="num_frames")
            if count < 1:
                raise AnnotationError(path, line, "num_frames must be at least 1")
            # Without a root, a frame folder is relative to its list's folder: where the frames job wrote both,
            # so that per-split outputs (OUT/train/frames.txt, OUT/val/frames.txt) need no common root.
            folder = os.path.join(root or os.path.dirname(os.path.abspath(path)), parts[0])
            yield line, VideoRecord(folder, 0, parts[0], count, True, rel=parts[0]), parts[2]
        else:
            rel = _inside_root(parts[0], root=root, path=path, line=line) if root else parts[0]
            yield line, VideoRecord(os.path.join(root, rel), 0, os.path.splitext(rel)[0], rel=rel), parts[1]


def read_path_label_list(path: str | os.PathLike, root: str | os.PathLike = "") -> list[VideoRecord]:
    """``relative/path.mp4 label`` per line (VideoMAE's lists; the path may contain spaces), integer labels.
    :func:`read_labelled_list` also reads class names and matches classes by name."""
    path, root = os.fspath(path), os.fspath(root)
    return [replace(r, label=_parse_int(label, path=path, line=line, what="label"))
            for line, r, label in _list_rows(path, root, frames=False)]


def read_frame_list(path: str | os.PathLike, root: str | os.PathLike = "") -> list[VideoRecord]:
    """``frame_dir num_frames label`` per line (preprocessed frame folders; the folder may contain spaces),
    integer labels. :func:`read_labelled_list` also reads class names and matches classes by name."""
    path, root = os.fspath(path), os.fspath(root)
    return [replace(r, label=_parse_int(label, path=path, line=line, what="label"))
            for line, r, label in _list_rows(path, root, frames=True)]


def _label_kind(text: str, *, path: str, line: int) -> int | str:
    """An integer label (a class index; "3.0" too), or the text as a class name; a non-integer number is an
    error rather than a name."""
    try:
        value = float(text)
    except ValueError:
        return text
    if value != value:  # "nan"
        return text
    return _parse_int(text, path=path, line=line, what="label")


def _class_file(path: str) -> list[str]:
    try:
        names = load_class_names(path)
    except json.JSONDecodeError as err:
        raise AnnotationError(path, err.lineno, f"invalid JSON: {err.msg}") from err
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise AnnotationError(path, f"class {i}", f"expected a class name, got {name!r}")
        if name in seen:
            raise AnnotationError(path, f"class {i}", f"class {name!r} is listed twice")
        seen.add(name)
    return names


def read_labelled_list(path: str | os.PathLike, root: str | os.PathLike = "", *, frames: bool = False,
                       labels: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
                       ) -> tuple[list[VideoRecord], list[str]]:
    """A ``path label`` list (``frames``: ``frame_dir num_frames label``) -> records and class names.

    The label column holds class indices or class names (one or the other in a file; -1 is unlabelled in both).
    Indices point into ``labels``, a class-name file (:func:`load_class_names`), when given; names are looked up
    in it. Without ``class_names`` (training) the classes are ``labels``' list, else this file's names sorted, else
    bare indices ``"0" .. str(max label)``. With ``class_names`` (the model's) records are matched to them by
    name (:func:`match_classes`) and ``class_names`` is returned; bare indices without ``labels`` are matched by
    position only when ``class_names`` are bare indices too.
    """
    path, root = os.fspath(path), os.fspath(root)
    rows, first = [], None
    for line, record, text in _list_rows(path, root, frames):
        label = _label_kind(text, path=path, line=line)
        if label != -1:
            kind = "name" if isinstance(label, str) else "index"
            if first is None:
                first = (kind, line)
            elif kind != first[0]:
                raise AnnotationError(path, line, f"label {text!r} is a class {kind} but line {first[1]} has a class "
                                      f"{first[0]}: a list gives indices or names, not both")
        rows.append((line, record, label))
    file_names = _class_file(os.fspath(labels)) if labels else None
    lines = [line for line, _, _ in rows]
    if first is not None and first[0] == "name":
        own = sorted({label for _, _, label in rows if label != -1})
        index = {n: i for i, n in enumerate(own)}
        records = [replace(r, label=-1 if label == -1 else index[label]) for _, r, label in rows]
        if class_names is not None:
            return match_classes(records, own, class_names, source=path, lines=lines), list(class_names)
        if file_names is None:
            return records, own
        return match_classes(records, own, file_names, source=path, lines=lines, known_as=os.fspath(labels)), file_names
    records = [replace(r, label=label) for _, r, label in rows]
    if file_names is not None:
        for line, _, label in rows:
            if not -1 <= label < len(file_names):
                raise AnnotationError(path, line, f"label {label} is not a class index of {os.fspath(labels)} "
                                      f"(0 to {len(file_names) - 1})")
    if class_names is not None:
        return match_classes(records, file_names, class_names, source=path, lines=lines), list(class_names)
    if file_names is not None:
        return records, file_names
    for line, _, label in rows:
        if label < -1:
            raise AnnotationError(path, line, f"label {label} is not a class index")
    return records, [str(i) for i in range(max((r.label for r in records), default=-1) + 1)]
