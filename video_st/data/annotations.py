"""Annotation files -> video records: the one parser of each format, for training, testing and preprocessing.

Formats: the official Kinetics CSV (``label,youtube_id,time_start,time_end,split[,is_cc]``, clip files
``{youtube_id}_{start:06d}_{end:06d}.mp4``), Something-Something-v2 (labels JSON + split JSON, ``{id}.webm``),
``path label`` lists (VideoMAE) and ``frame_dir num_frames label`` lists (frame folders) in
:mod:`video_st.data.lists`, and plain folders in :mod:`video_st.data.folders`.
A line that does not parse raises :class:`AnnotationError` naming the file and line. Torch-free, so the
preprocessing jobs import it without torch's start-up cost.

Classes travel by name: a reader given ``class_names`` (the model's, or the training split's) returns records
labelled in that order, whatever order the file lists its classes in (:func:`match_classes`). A class the model
does not know is an error naming it and the file; bare class indices are matched by position only when the
model's classes are bare indices too.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from difflib import get_close_matches

from ..errors import VideoSTError
from ..fileio import write_atomic


K400_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


class AnnotationError(VideoSTError, ValueError):
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


def is_bare_indices(names: Sequence[str]) -> bool:
    """``["0", "1", ...]``: the class list of a set whose annotations gave indices and no names."""
    return list(names) == [str(i) for i in range(len(names))]


def _few(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (", ..." if len(names) > n else "")


def match_classes(records: Sequence[VideoRecord], file_names: Sequence[str] | None, model_names: Sequence[str], *,
                  source: str | os.PathLike, lines: Sequence[int | str] | None = None,
                  known_as: str = "the model") -> list[VideoRecord]:
    """``records`` relabelled from the file's class order into ``model_names`` order, by name.

    ``records`` carry labels as indices into ``file_names`` (-1: unlabelled, kept). ``file_names`` None means the
    labels are bare class indices with no names: they are kept by position, which is only meaningful when
    ``model_names`` are bare indices too ("0", "1", ...); otherwise this is an error asking for a class-name file.
    A class of the file that no record uses need not be known to the model (the full 174-class SSv2 labels JSON
    for a model trained on a subset); a record labelled with a class the model does not know is an
    :class:`AnnotationError` at ``source``:``lines[i]`` ("-" without ``lines``) that names the class.
    ``known_as`` names the list ``model_names`` comes from, for the messages.
    """
    source, model_names = os.fspath(source), list(model_names)
    where = (lambda i: lines[i]) if lines is not None else (lambda i: "-")
    if len(set(model_names)) != len(model_names):
        repeated = sorted({n for n in model_names if model_names.count(n) > 1})
        raise ValueError(f"the classes of {known_as} repeat {_few(repeated)}: {source} cannot be matched by name")
    if file_names is None:
        if not is_bare_indices(model_names):
            first = next((i for i, r in enumerate(records) if r.label != -1), None)
            if first is None:
                return list(records)
            raise AnnotationError(source, where(first), f"labels are bare class indices but the {len(model_names)} "
                                  f"classes of {known_as} are named ({_few(model_names)}): give data.labels (a "
                                  "class-name file) or class names in the label column, so labels are matched by name")
        for i, r in enumerate(records):
            if not -1 <= r.label < len(model_names):
                raise AnnotationError(source, where(i), f"label {r.label} is not a class index of {known_as} "
                                      f"(0 to {len(model_names) - 1})")
        return list(records)
    file_names = list(file_names)
    index = {name: i for i, name in enumerate(model_names)}
    out = []
    for i, r in enumerate(records):
        if r.label == -1:
            out.append(r)
            continue
        if not 0 <= r.label < len(file_names):
            raise AnnotationError(source, where(i), f"label {r.label} is not a class index (the file's classes "
                                  f"are 0 to {len(file_names) - 1})")
        name = file_names[r.label]
        if name not in index:
            unknown = sorted({file_names[x.label] for x in records if 0 <= x.label < len(file_names)} - index.keys())
            folded = {m.casefold(): m for m in model_names}
            close = [folded[c] for c in get_close_matches(name.casefold(), list(folded), n=1)]
            raise AnnotationError(source, where(i), f"class {name!r} is not among the {len(model_names)} classes of "
                                  f"{known_as} (first few: {_few(model_names)})"
                                  + (f"; did you mean {close[0]!r}?" if close else "")
                                  + (f"; {len(unknown) - 1} other unknown classes: {_few([u for u in unknown if u != name])}"
                                     if len(unknown) > 1 else ""))
        out.append(r if index[name] == r.label else replace(r, label=index[name]))
    return out


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


def _folder_listings() -> Callable[[str], frozenset[str]]:
    """``listing(folder)``: its names, listed once (empty where it cannot be listed): resolving 240k Kinetics rows
    by stat() costs up to three metadata lookups per row on a network file system, in every process that reads
    the list."""

    @functools.lru_cache(maxsize=None)
    def listing(folder: str) -> frozenset[str]:
        try:
            return frozenset(os.listdir(folder))
        except OSError:
            return frozenset()

    return listing


def _k400_candidates(name: str, split: str, label: str) -> list[str]:
    return [name, os.path.join(split, name), os.path.join(split, label, name)] if split else [name]


def _k400_finder(root: str) -> Callable[[str, str, str], str]:
    """``find(name, split, label)``: the first of NAME, SPLIT/NAME, SPLIT/LABEL/NAME that exists below ``root``,
    else NAME (the missing-file check reports it).

    The folder of each candidate depends on (split, label) only, so it is worked out once per pair instead of per
    row: for 240k Kinetics rows the per-row path arithmetic (six joins, three dirname / basename splits) was most
    of the reader's time. A name with a separator in it (never a YouTube id) takes the per-row arithmetic."""
    listing = _folder_listings()

    @functools.lru_cache(maxsize=None)
    def folders(split: str, label: str) -> tuple[str, ...]:
        # For a NAME without separators, dirname(candidate) does not depend on NAME: "x" stands for any of them.
        return tuple(os.path.join(root, os.path.dirname(c)) for c in _k400_candidates("x", split, label))

    def find(name: str, split: str, label: str) -> str:
        if os.path.basename(name) != name:
            candidates = _k400_candidates(name, split, label)
            return next((c for c in candidates
                         if os.path.basename(c) in listing(os.path.join(root, os.path.dirname(c)))), candidates[0])
        for k, folder in enumerate(folders(split, label)):
            if name in listing(folder):  # listed only when the candidates before it are not there
                return _k400_candidates(name, split, label)[k] if k else name
        return name

    return find


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
    K400 split shares); with them (the training set's or the model's list) records are labelled in that order, by
    name (:func:`match_classes`), and those names are returned. Rows without a label (test splits) get -1. Files
    are looked up as ROOT/NAME, ROOT/SPLIT/NAME, ROOT/SPLIT/LABEL/NAME; when none exists the first is kept, and
    the missing-file check reports it."""
    path, root = os.fspath(path), os.fspath(root)
    rows = list(_k400_rows(path))
    file_names = sorted({r[1] for r in rows if r[1]})
    index = {n: i for i, n in enumerate(file_names)}
    find = _k400_finder(root)
    records = []
    for line, label, youtube_id, start, end, split in rows:
        name = k400_file_name(youtube_id, start, end)
        rel = find(name, split, label)
        records.append(VideoRecord(os.path.join(root, rel), index[label] if label else -1, name[:-4], rel=rel))
    if class_names is None:
        return records, file_names
    records = match_classes(records, file_names, class_names, source=path, lines=[r[0] for r in rows])
    return records, list(class_names)


def strip_template(template: str) -> str:
    """SSv2 templates carry ``[something]`` brackets; the labels file uses them stripped."""
    return template.replace("[", "").replace("]", "")


def read_ssv2(labels_json: str | os.PathLike, split_json: str | os.PathLike, root: str | os.PathLike,
              ext: str = ".webm", class_names: Sequence[str] | None = None) -> tuple[list[VideoRecord], list[str]]:
    """Something-Something-v2: labels JSON (template -> "index") + a split JSON -> records ``ROOT/{id}{ext}``.

    Without ``class_names`` (training) the labels JSON defines the classes: its indices must be 0..N-1, and the
    names come back in index order. With ``class_names`` (the model's) each video's template is matched to them
    by name (:func:`match_classes`), whatever indices the labels JSON gives, and ``class_names`` comes back; a
    template of the labels JSON that no video uses need not be one of the model's."""
    labels_json, split_json, root = os.fspath(labels_json), os.fspath(split_json), os.fspath(root)
    with open(labels_json, encoding="utf-8") as f:
        try:
            labels = {k: int(v) for k, v in json.load(f).items()}
        except json.JSONDecodeError as err:
            raise AnnotationError(labels_json, err.lineno, f"invalid JSON: {err.msg}") from err
        except (ValueError, AttributeError, TypeError) as err:
            raise AnnotationError(labels_json, "-", f"expected a JSON object template -> index: {err}") from err
    names = [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1])]
    if class_names is None and sorted(labels.values()) != list(range(len(labels))):
        by_index: dict[int, list[str]] = {}
        for name, i in labels.items():
            by_index.setdefault(i, []).append(name)
        twice = next(((i, n) for i, n in sorted(by_index.items()) if len(n) > 1), None)
        reason = (f"index {twice[0]} is given to {_few(twice[1])}" if twice else
                  f"indices run {min(labels.values())}..{max(labels.values())} with gaps")
        raise AnnotationError(labels_json, "-", f"class indices must be 0..{len(labels) - 1}, each once: {reason}")
    position = {name: i for i, name in enumerate(names)}
    with open(split_json, encoding="utf-8") as f:
        try:
            entries = json.load(f)
        except json.JSONDecodeError as err:
            raise AnnotationError(split_json, err.lineno, f"invalid JSON: {err.msg}") from err
    if not isinstance(entries, list):
        raise AnnotationError(split_json, 1, "expected a JSON list of videos")
    records, where = [], []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise AnnotationError(split_json, f"entry {n}", f"expected an object with an 'id', got {str(entry)[:80]}")
        where.append(f"entry {n} (id {entry['id']})")
        label = -1
        if "template" in entry:  # the test split has no templates
            template = strip_template(entry["template"])
            if template not in position:
                raise AnnotationError(split_json, where[-1], f"template {template!r} not in {labels_json}")
            label = position[template]
        rel = f"{entry['id']}{ext}"
        records.append(VideoRecord(os.path.join(root, rel), label, str(entry["id"]), rel=rel))
    if class_names is None:
        return records, names
    return match_classes(records, names, class_names, source=split_json, lines=where), list(class_names)


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
