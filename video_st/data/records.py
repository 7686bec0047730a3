"""Video records in flat numpy buffers: what a dataset holds, so that forked loader workers share it.

A list of :class:`~video_st.data.annotations.VideoRecord` is one Python object per record plus one per string:
about 850 bytes a Kinetics row, and every access (and every garbage collection pass) in a forked loader worker
writes their reference counts and GC headers, so each worker slowly copies the pages that hold them. A
:class:`RecordTable` is a dozen numpy arrays whatever the row count: each string field one uint8 buffer with int64
offsets, the integer fields int arrays. A worker reads it without writing to its pages (copy-on-write sharing stays
intact), and a spawned worker gets it as a few large buffers in one pickle, not as 240k objects. Records are built
on access. Torch-free.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from .annotations import VideoRecord

# Any Python string round-trips, lone surrogates included (file names that are not valid UTF-8 come from
# os.listdir with surrogate escapes).
_ERRORS = "surrogatepass"
NO_FRAME_COUNT = -1  # num_frames None: the video reports its count when opened


@dataclass(frozen=True, eq=False, kw_only=True)
class Strings:
    """Strings as one UTF-8 buffer: string ``i`` is ``data[offsets[i]:offsets[i + 1]]``."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64, len + 1 entries, offsets[0] == 0, non-decreasing, offsets[-1] == len(data)

    def __post_init__(self) -> None:
        if self.data.dtype != np.uint8 or self.data.ndim != 1:
            raise ValueError(f"string data must be a 1-d uint8 array, got {self.data.dtype} {self.data.shape}")
        if self.offsets.dtype != np.int64 or self.offsets.ndim != 1 or len(self.offsets) < 1:
            raise ValueError(f"string offsets must be a non-empty 1-d int64 array, got {self.offsets.dtype} "
                             f"{self.offsets.shape}")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.data) or np.any(np.diff(self.offsets) < 0):
            raise ValueError("string offsets must start at 0, never decrease and end at the data's length")

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> Strings:
        encoded = [s.encode("utf-8", _ERRORS) for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        return cls(data=np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets=offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        return self._at(_row(index, len(self)))

    def _at(self, i: int) -> str:  # 0 <= i < len, checked by the caller
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8", _ERRORS)

    def take(self, indices: np.ndarray) -> Strings:
        """The strings at ``indices`` (int64, each in range), as a new compact buffer."""
        starts, lengths = self.offsets[indices], self.offsets[indices + 1] - self.offsets[indices]
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Byte j of new string k is data[starts[k] + (j - offsets[k])]: one gather, no Python loop per string.
        source = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return Strings(data=self.data[source], offsets=offsets)

    def equals(self, other: Strings) -> bool:
        # Equal UTF-8 bytes are equal strings: the encoding is one-to-one.
        return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.data, other.data)


@dataclass(frozen=True, eq=False, kw_only=True)
class RecordTable(Sequence[VideoRecord]):
    """The fields of :class:`VideoRecord`, one column each; ``table[i]`` is the ``VideoRecord`` of row ``i``.

    A ``Sequence[VideoRecord]``: ``len``, indexing (negative too), iteration; a slice is a ``RecordTable``.
    Equal to another table or to a sequence of records with the same contents. Build it with
    :meth:`from_records`."""

    path: Strings
    label: np.ndarray  # int64; -1 unlabelled
    video_id: Strings
    num_frames: np.ndarray  # int64; NO_FRAME_COUNT where the record's num_frames is None
    is_frame_folder: np.ndarray  # bool
    rel: Strings

    def __post_init__(self) -> None:
        for name, dtype in (("label", np.int64), ("num_frames", np.int64), ("is_frame_folder", np.bool_)):
            column = getattr(self, name)
            if column.dtype != dtype or column.ndim != 1:
                raise ValueError(f"{name} must be a 1-d {np.dtype(dtype)} array, got {column.dtype} {column.shape}")
        lengths = {name: len(getattr(self, name)) for name in _FIELDS}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"the columns of a record table must have one length, got {lengths}")

    @classmethod
    def from_records(cls, records: Iterable[VideoRecord]) -> RecordTable:
        """The table of ``records`` (a list, any iterable of ``VideoRecord``, or a table: returned as it is)."""
        if isinstance(records, RecordTable):
            return records  # immutable: sharing it is safe
        records = list(records)
        n = len(records)
        frames = np.fromiter((NO_FRAME_COUNT if r.num_frames is None else r.num_frames for r in records),
                             dtype=np.int64, count=n)
        if np.any(frames < 0) and any(r.num_frames is not None and r.num_frames < 0 for r in records):
            raise ValueError("num_frames must be None or at least 0 (-1 stands for None in a record table)")
        return cls(path=Strings.from_strings(r.path for r in records),
                   label=np.fromiter((r.label for r in records), dtype=np.int64, count=n),
                   video_id=Strings.from_strings(r.video_id for r in records),
                   num_frames=frames,
                   is_frame_folder=np.fromiter((bool(r.is_frame_folder) for r in records), dtype=np.bool_, count=n),
                   rel=Strings.from_strings(r.rel for r in records))

    def __len__(self) -> int:
        return len(self.label)

    @overload
    def __getitem__(self, index: int) -> VideoRecord: ...

    @overload
    def __getitem__(self, index: slice) -> RecordTable: ...

    def __getitem__(self, index: int | slice) -> VideoRecord | RecordTable:
        if isinstance(index, slice):
            return self.take(np.arange(len(self), dtype=np.int64)[index])
        i = _row(index, len(self))  # checked once here, not again per string column
        frames = int(self.num_frames[i])
        return VideoRecord(self.path._at(i), int(self.label[i]), self.video_id._at(i),
                           None if frames == NO_FRAME_COUNT else frames, bool(self.is_frame_folder[i]),
                           rel=self.rel._at(i))

    def __iter__(self) -> Iterator[VideoRecord]:
        for i in range(len(self)):
            yield self[i]

    def take(self, indices: Sequence[int] | np.ndarray) -> RecordTable:
        """The rows at integer ``indices`` (negative ones count from the end), in that order, as a new table."""
        rows = np.asarray(indices)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):  # a boolean mask would read as rows 0 and 1
            raise TypeError(f"record table indices must be integers, got {rows.dtype}")
        rows = rows.astype(np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"record table index out of range (table of {len(self)})")
        rows = np.where(rows < 0, rows + len(self), rows)
        return RecordTable(path=self.path.take(rows), label=self.label[rows], video_id=self.video_id.take(rows),
                           num_frames=self.num_frames[rows], is_frame_folder=self.is_frame_folder[rows],
                           rel=self.rel.take(rows))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordTable):
            return len(self) == len(other) and all(
                getattr(self, f).equals(getattr(other, f)) if isinstance(getattr(self, f), Strings)
                else np.array_equal(getattr(self, f), getattr(other, f)) for f in _FIELDS)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which are unhashable

    def __repr__(self) -> str:
        return f"RecordTable({len(self)} records)"

    @property
    def nbytes(self) -> int:
        """The bytes its buffers hold (the table's whole size, less a few hundred bytes of array headers)."""
        return sum(column.data.nbytes + column.offsets.nbytes if isinstance(column, Strings) else column.nbytes
                   for column in (getattr(self, f) for f in _FIELDS))


_FIELDS = ("path", "label", "video_id", "num_frames", "is_frame_folder", "rel")


def _row(index: int, size: int) -> int:
    i = operator.index(index)  # numpy integers too; a float is a TypeError, as for a list
    if not -size <= i < size:
        raise IndexError(f"record table index {index} out of range (table of {size})")
    return i + size if i < 0 else i
