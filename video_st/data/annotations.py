"""Annotation files -> video records: the one parser of each format, for training, testing and preprocessing.

Formats: the official Kinetics CSV (``label,youtube_id,time_start,time_end,split[,is_cc]``, clip files
``{youtube_id}_{start:06d}_{end:06d}.mp4``), Something-Something-v2 (labels JSON + split JSON, ``{id}.webm``),
``path label`` lists (VideoMAE), ``frame_dir num_frames label`` lists (frame folders), and plain folders.
A line that does not parse raises :class:`AnnotationError` naming the file and line. Torch-free, so the
preprocessing jobs import it without torch's start-up cost.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..fileio import write_atomic

_log = logging.getLogger(__name__)

K400_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


class AnnotationError(ValueError):
    """An annotation that does not parse; the message is ``file:line: problem``."""

    def __init__(self, path: str | os.PathLike, line: int | str, reason: str) -> None:
        self.path, self.line, self.reason = os.fspath(path), line, reason
        super().__init__(f"{self.path}:{line}: {reason}")


@dataclass(frozen=True)
class VideoRecord:
    path: str  # the file (or frame folder) to read
    label: int  # class index; -1 where the annotation has none (test splits, plain folders)
    video_id: str
    num_frames: int | None = None  # known for frame folders; videos report theirs when opened
    is_frame_folder: bool = False
    rel: str = ""  # path relative to the dataset root: where a preprocessed copy of it goes


def k400_file_name(youtube_id: str, start: int, end: int) -> str:
    return f"{youtube_id}_{start:06d}_{end:06d}.mp4"


def _parse_int(text: str, *, path: str, line: int, what: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(path, line, f"{what} {text!r} is not an integer") from None
    if not value.is_integer():
        raise AnnotationError(path, line, f"{what} {text!r} is not an integer")
    return int(value)


def _inside_root(name: str, *, root: str, path: str, line: int) -> str:
    # The relative path decides where a preprocessed copy is written: it must stay inside the output folder.
    rel = os.path.normpath(os.path.relpath(name, root) if os.path.isabs(name) else name)
    if rel == ".." or rel.startswith(".." + os.sep):
        raise AnnotationError(path, line, f"video path {name!r} is outside the root {root}")
    return rel


def _listing_lookup() -> Callable[[str, str], bool]:
    """``exists(folder, name)`` from one listing per folder: resolving 240k Kinetics rows by stat() costs up to
    three metadata lookups per row on a network file system, in every process that reads the list."""

    @functools.lru_cache(maxsize=None)
    def listing(folder: str) -> frozenset[str]:
        try:
            return frozenset(os.listdir(folder))
        except OSError:
            return frozenset()

    return lambda folder, name: name in listing(folder)


def _k400_rows(path: str) -> Iterable[tuple[int, str, str, int, int, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [c.strip() for c in next(reader, [])]
        if tuple(header[:5]) != K400_COLUMNS or header[5:] not in ([], ["is_cc"]):
            raise AnnotationError(path, 1, f"expected the header {','.join(K400_COLUMNS)}[,is_cc], got {header}")
        for row in reader:
            line = reader.line_num
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise AnnotationError(path, line, f"expected {len(header)} comma-separated fields, got {len(row)}: {row}")
            label, youtube_id, start, end, split = (c.strip() for c in row[:5])
            if not youtube_id:
                raise AnnotationError(path, line, "empty youtube_id")
            yield (line, label, youtube_id, _parse_int(start, path=path, line=line, what="time_start"),
                   _parse_int(end, path=path, line=line, what="time_end"), split)


def read_k400_csv(path: str | os.PathLike, root: str | os.PathLike, class_names: Sequence[str] | None = None,
                  ) -> tuple[list[VideoRecord], list[str]]:
    """Records and class names. Without ``class_names`` the classes are this file's labels sorted (the order every
    K400 split shares); pass the training set's list when reading another split. Rows without a label (test
    splits) get -1. Files are looked up as ROOT/NAME, ROOT/SPLIT/NAME, ROOT/SPLIT/LABEL/NAME; when none exists the
    first is kept, and the missing-file check reports it."""
    path, root = os.fspath(path), os.fspath(root)
    rows = list(_k400_rows(path))
    names = list(class_names) if class_names is not None else sorted({r[1] for r in rows if r[1]})
    index = {n: i for i, n in enumerate(names)}
    exists = _listing_lookup()
    records = []
    for line, label, youtube_id, start, end, split in rows:
        if label and label not in index:
            raise AnnotationError(path, line, f"label {label!r} is not among the {len(names)} classes")
        name = k400_file_name(youtube_id, start, end)
        candidates = [name, os.path.join(split, name), os.path.join(split, label, name)] if split else [name]
        rel = next((c for c in candidates if exists(os.path.join(root, os.path.dirname(c)), os.path.basename(c))),
                   candidates[0])
        records.append(VideoRecord(os.path.join(root, rel), index[label] if label else -1, name[:-4], rel=rel))
    return records, names


def _lines(path: str) -> Iterable[tuple[int, str]]:
    """(1-based line number, stripped text) of every non-blank line."""
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if text.strip():
                yield number, text.strip()


def read_path_label_list(path: str | os.PathLike, root: str | os.PathLike = "") -> list[VideoRecord]:
    """``relative/path.mp4 label`` per line (VideoMAE's lists; the path may contain spaces)."""
    path, root, records = os.fspath(path), os.fspath(root), []
    for line, text in _lines(path):
        parts = text.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise AnnotationError(path, line, f"expected 'path label', got {text!r}")
        label = _parse_int(parts[1], path=path, line=line, what="label")
        rel = _inside_root(parts[0], root=root, path=path, line=line) if root else parts[0]
        records.append(VideoRecord(os.path.join(root, rel), label, os.path.splitext(rel)[0], rel=rel))
    return records


def read_frame_list(path: str | os.PathLike, root: str | os.PathLike = "") -> list[VideoRecord]:
    """``frame_dir num_frames label`` per line (preprocessed frame folders; the folder may contain spaces)."""
    path, root, records = os.fspath(path), os.fspath(root), []
    for line, text in _lines(path):
        parts = text.rsplit(maxsplit=2)
        if len(parts) != 3:
            raise AnnotationError(path, line, f"expected 'frame_dir num_frames label', got {text!r}")
        count = _parse_int(parts[1], path=path, line=line, what="num_frames")
        label = _parse_int(parts[2], path=path, line=line, what="label")
        if count < 1:
            raise AnnotationError(path, line, "num_frames must be at least 1")
        records.append(VideoRecord(os.path.join(root, parts[0]), label, parts[0], count, True, rel=parts[0]))
    return records


def strip_template(template: str) -> str:
    """SSv2 templates carry ``[something]`` brackets; the labels file uses them stripped."""
    return template.replace("[", "").replace("]", "")


def read_ssv2(labels_json: str | os.PathLike, split_json: str | os.PathLike, root: str | os.PathLike,
              ext: str = ".webm") -> tuple[list[VideoRecord], list[str]]:
    """Something-Something-v2: labels JSON (template -> "index") + a split JSON -> records ``ROOT/{id}{ext}``."""
    labels_json, split_json, root = os.fspath(labels_json), os.fspath(split_json), os.fspath(root)
    with open(labels_json, encoding="utf-8") as f:
        try:
            labels = {k: int(v) for k, v in json.load(f).items()}
        except json.JSONDecodeError as err:
            raise AnnotationError(labels_json, err.lineno, f"invalid JSON: {err.msg}") from err
        except (ValueError, AttributeError) as err:
            raise AnnotationError(labels_json, "-", f"expected a JSON object template -> index: {err}") from err
    names = [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1])]
    with open(split_json, encoding="utf-8") as f:
        try:
            entries = json.load(f)
        except json.JSONDecodeError as err:
            raise AnnotationError(split_json, err.lineno, f"invalid JSON: {err.msg}") from err
    if not isinstance(entries, list):
        raise AnnotationError(split_json, 1, "expected a JSON list of videos")
    records = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise AnnotationError(split_json, f"entry {n}", f"expected an object with an 'id', got {str(entry)[:80]}")
        label = -1
        if "template" in entry:  # the test split has no templates
            template = strip_template(entry["template"])
            if template not in labels:
                raise AnnotationError(split_json, f"entry {n} (id {entry['id']})", f"template {template!r} not in {labels_json}")
            label = labels[template]
        rel = f"{entry['id']}{ext}"
        records.append(VideoRecord(os.path.join(root, rel), label, str(entry["id"]), rel=rel))
    return records, names


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


def load_class_names(path: str | os.PathLike) -> list[str]:
    """A class list: a JSON list, or one name per line."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return list(json.loads(text))
    return [line.strip() for line in text.splitlines() if line.strip()]


def save_class_names(names: Sequence[str], path: str | os.PathLike) -> None:
    """The class index -> name map saved with a run (JSON list), written atomically."""
    write_atomic(path, json.dumps(list(names), indent=1))
