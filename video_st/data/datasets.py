"""Video records -> clips for training and multi-view testing (records come from ``annotations``).

Bad input is handled by one policy:
- an annotation line that does not parse is an :class:`AnnotationError` naming the file and the line;
- missing files are found when the dataset is built (a stat per file, or a scan's invalid list) and reported
  together: an error listing them, or, with ``missing="skip"``, a warning and their exclusion;
- a video that fails to decode in TRAINING is replaced by another random sample; the failure travels with the
  batch to the main process, where :class:`BadFileLog` logs each path once and writes the list at the end;
- in TESTING a video is never replaced: the sample carries the error, the tester excludes, lists and counts it.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import VideoSTError
from ..fileio import write_atomic
from .annotations import AnnotationError, VideoRecord
from .decode import BACKENDS, VideoReadError, open_video
from .frames import read_frame_folder
from .records import RecordTable
from .sampling import ClipSpec, train_indices, view_indices

_log = logging.getLogger(__name__)

class MissingVideosError(VideoSTError, FileNotFoundError):
    """Videos an annotation file lists that do not exist: one line with the count, the first few, and the file
    that lists them all (written to the temporary folder: nothing of the run exists yet)."""

    def __init__(self, missing: Sequence[str], source: str) -> None:
        self.missing = list(missing)
        with tempfile.NamedTemporaryFile("w", prefix="video_st-missing-", suffix=".txt", delete=False) as f:
            f.write("".join(f"{path}\n" for path in self.missing))
            self.list_file = f.name
        shown = ", ".join(self.missing[:3])
        more = f" and {len(self.missing) - 3} more" if len(self.missing) > 3 else ""
        super().__init__(f"{len(self.missing)} videos of {source} are missing: {shown}{more} (full list: "
                         f"{self.list_file}); check data.root, or data.missing=skip to leave them out")


def check_files(records: Sequence[VideoRecord], *, source: str, missing: str = "error",
                invalid_list: str | os.PathLike | None = None) -> list[VideoRecord]:
    """Find every missing file at once and raise listing them (``missing="error"``) or drop them (``"skip"``).

    Videos in ``invalid_list`` (the ``invalid.txt`` of ``tools/preprocess.py scan``) are excluded whatever
    ``missing`` says: the scan found them unreadable, which is why the list is given."""
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    invalid: set[str] = set()
    if invalid_list is not None:
        if not os.path.isfile(invalid_list):
            raise AnnotationError(invalid_list, "-", "no such file (the scan's invalid-video list)")
        with open(invalid_list) as f:
            invalid = {line.split("\t")[0].strip() for line in f if line.strip()}
    excluded = [r.path for r in records if r.path in invalid]
    if excluded:
        _log.warning("%s: excluding %d videos the scan found unreadable (%s; first: %s)", source, len(excluded),
                     invalid_list, excluded[0])
        records = [r for r in records if r.path not in invalid]
    gone = [r.path for r in records if not os.path.exists(r.path)]
    if not gone:
        return list(records)
    if missing == "error":
        raise MissingVideosError(gone, source)
    _log.warning("%s: skipping %d missing videos (first: %s)", source, len(gone), gone[0])
    bad = set(gone)
    return [r for r in records if r.path not in bad]


# -- clips -------------------------------------------------------------------------------------------------------
class VideoClipDataset(torch.utils.data.Dataset):
    """Clips of videos (or frame folders) for training (``mode="train"``) or multi-view testing (``"test"``).

    Train item: ``{"video": (C, T, H, W) or (R, C, T, H, W) with R repeated augmentations, "label", "index",
    "failed": [(path, cause), ...]}`` (the failures met and replaced on the way); with ``masks`` also
    ``"foreground"``: bool (T, H, W) or (R, T, H, W), the clip's object pixels through its own crop and flip.
    Test item: ``{"views": (V, C, T, H, W) or None, "view_ok": bool list, "label", "index", "video_id", "error"}``
    with V = temporal x spatial views, temporal-major; all views come from one decode of the union of frames.
    ``records``: any sequence of records (a reader's list, a :class:`~video_st.data.records.RecordTable`), held
    as a ``RecordTable`` in ``self.records``. ``masks``: ``{video_id: bool (T, H, W)}``, one mask frame per video
    frame (data/masks.py; training only, needs a transform with ``apply``: ``TrainTransform``).
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        mode: str,
        clip: ClipSpec,
        transform: Callable[..., Any],
        backend: str = "decord",
        decode_threads: int = 1,
        repeats: int = 1,
        max_retries: int = 10,
        frame_template: str = "img_{:05d}.jpg",
        seed: int = 0,
        masks: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if masks is not None and mode != "train":
            raise ValueError("masks go with training items only (the test path maps them itself: bench/foreground)")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not records:
            raise ValueError("no videos to read")
        # Flat buffers, not a list of objects: forked loader workers read them without copying (records.py).
        self.records: RecordTable = RecordTable.from_records(records)
        self.mode, self.clip, self.transform = mode, clip, transform
        self.backend, self.decode_threads, self.repeats = backend, decode_threads, repeats
        self.max_retries, self.frame_template, self.seed = max_retries, frame_template, seed
        self.masks = masks  # a dict of arrays (forked workers copy what they touch): generated sets are small

    def __len__(self) -> int:
        return len(self.records)

    def _rng(self, index: int, seed: int | None) -> random.Random:
        if seed is not None:  # from samplers.TrainSampler: independent of workers and of resuming
            return random.Random(seed)
        # torch.initial_seed() differs per worker and per epoch (the loader draws a base seed each epoch), so
        # clips change every epoch yet a seeded run is reproducible.
        return random.Random((torch.initial_seed() * 1_000_003 + index * 7919 + self.seed) % 2**63)

    def _open(self, record: VideoRecord):
        if record.is_frame_folder:
            return _FrameFolder(record, self.frame_template)
        return open_video(record.path, backend=self.backend, num_threads=self.decode_threads)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``key``: an index, or ``(index, augmentation seed)`` as ``samplers.TrainSampler`` yields."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        return self._train_item(index, seed) if self.mode == "train" else self._test_item(index)

    def _train_item(self, index: int, seed: int | None = None) -> dict[str, Any]:
        rng = self._rng(index, seed)
        failed: list[tuple[str, str]] = []
        for _ in range(self.max_retries + 1):
            record = self.records[index]
            try:
                source = self._open(record)
                clips, labels, pixels = [], [], []
                for _ in range(self.repeats):
                    idx = train_indices(source.num_frames, sampling=self.clip.sampling, num_frames=self.clip.num_frames,
                                        stride=self.clip.stride, rng=rng)
                    if self.masks is None:
                        video, label = self.transform(source.read(idx), record.label, rng)
                    else:
                        frames_mask = self.masks[record.video_id]
                        if max(idx) >= len(frames_mask):  # a masks file that does not fit the video: a bad video
                            raise VideoReadError(record.path, f"its mask has {len(frames_mask)} frames, the clip "
                                                              f"reads frame {max(idx)}")
                        video, label, mask = self.transform.apply(source.read(idx), record.label, rng,
                                                                  mask=frames_mask[list(idx)])
                        pixels.append(mask)
                    clips.append(video)
                    labels.append(label)
            except VideoReadError as err:
                failed.append((err.path, err.cause))
                index = rng.randrange(len(self.records))
                continue
            one = self.repeats == 1
            item = {"video": clips[0] if one else torch.stack(clips), "index": index, "failed": failed,
                    "label": labels[0] if one else torch.tensor(labels)}
            if pixels:
                item["foreground"] = pixels[0] if one else torch.stack(pixels)
            return item
        raise RuntimeError(f"{self.max_retries + 1} videos in a row failed to decode; last: {failed[-1]}")

    def _test_item(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        item = {"views": None, "view_ok": [], "label": record.label, "index": index, "video_id": record.video_id,
                "path": record.path, "error": None}
        spatial = self.clip.num_spatial_views
        try:
            source = self._open(record)
            temporal = view_indices(source.num_frames, sampling=self.clip.sampling, num_frames=self.clip.num_frames,
                                    stride=self.clip.stride, num_temporal=self.clip.num_temporal_views)
        except VideoReadError as err:
            item["error"] = err.cause
            return item
        try:
            union = sorted({i for view in temporal for i in view})
            frames = dict(zip(union, source.read(union), strict=True))
            per_view = [[frames[i] for i in view] for view in temporal]
            ok = [True] * len(temporal)
        except VideoReadError as err:
            # One read failed (e.g. a truncated file whose late frames do not decode): salvage the views that do,
            # view by view with PyAV. decord decodes ahead on a thread of its own: on a file with a broken tail,
            # whether a read of good frames fails depends on when that thread meets the broken packet (and the
            # reader is unusable after it), so salvaging with decord lost good views at random. PyAV decodes
            # exactly the packets up to the last frame a view needs, the same FFmpeg decoder, the same pixels.
            per_view, ok = [], []
            for view in temporal:
                try:
                    salvage = source if record.is_frame_folder else open_video(record.path, backend="pyav")
                    per_view.append(list(salvage.read(view)))
                    ok.append(True)
                except VideoReadError:
                    per_view.append(None)
                    ok.append(False)
            if not any(ok):
                item["error"] = err.cause
                return item
        # Every view written once, straight into the item's tensor (no per-crop tensors stacked afterwards).
        size = self.transform.size
        length = len(next(f for f, good in zip(per_view, ok, strict=True) if good))
        views = torch.empty((sum(ok) * spatial, 3, length, size, size))
        view_ok, filled = [], 0
        for frames_of_view, good in zip(per_view, ok, strict=True):
            view_ok += [good] * spatial
            if good:
                self.transform.all_crops(np.stack(frames_of_view), out=views[filled : filled + spatial])
                filled += spatial
        item["views"], item["view_ok"] = views, view_ok
        if not all(view_ok):
            item["error"] = f"{view_ok.count(False)} of {len(view_ok)} views failed to decode"
        return item


class _FrameFolder:
    """A frame folder seen through the same interface as an opened video."""

    def __init__(self, record: VideoRecord, template: str) -> None:
        self.path, self.template = record.path, template
        if not os.path.isdir(self.path):
            raise VideoReadError(self.path, "no such frame folder")
        self.num_frames = record.num_frames or sum(1 for n in os.listdir(self.path) if n.endswith(".jpg"))

    def read(self, indices: Sequence[int]):
        return read_frame_folder(self.path, indices, template=self.template)


# -- batches and the bad-file report -----------------------------------------------------------------------------
def train_collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    videos = [b["video"] for b in batch]
    labels = [torch.as_tensor(b["label"]) for b in batch]
    video = torch.cat(videos) if videos[0].dim() == 5 else torch.stack(videos)  # repeats flatten into the batch
    label = torch.cat([lab.reshape(-1) for lab in labels])
    out = {"video": video, "label": label, "index": torch.tensor([b["index"] for b in batch]),
           "failed": [f for b in batch for f in b["failed"]]}
    if "foreground" in batch[0]:
        masks = [b["foreground"] for b in batch]
        out["foreground"] = torch.cat(masks) if masks[0].dim() == 4 else torch.stack(masks)
    return out


def eval_collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Good videos stacked; failed ones listed, never replaced."""
    good = [b for b in batch if b["views"] is not None]
    out: dict[str, Any] = {
        "failed": [{"path": b["path"], "index": b["index"], "error": b["error"]} for b in batch if b["views"] is None],
        "partial": [{"path": b["path"], "index": b["index"], "error": b["error"], "view_ok": b["view_ok"]}
                    for b in good if b["error"]],
    }
    if good:
        out["views"] = torch.cat([b["views"] for b in good])
        out["view_counts"] = torch.tensor([b["views"].shape[0] for b in good])
        out["label"] = torch.tensor([b["label"] for b in good])
        out["index"] = torch.tensor([b["index"] for b in good])
    return out


@dataclass
class BadFileLog:
    """Collects decode failures reported by batches (from any worker) in the main process; logs each once."""

    seen: dict[str, str] = field(default_factory=dict)

    def record(self, failures: Iterable[tuple[str, str]]) -> None:
        for path, cause in failures:
            if path not in self.seen:
                self.seen[path] = cause
                _log.warning("unreadable video replaced by another sample: %s (%s)", path, cause)

    def write(self, path: str | os.PathLike) -> None:
        write_atomic(path, "".join(f"{bad}\t{cause}\n" for bad, cause in sorted(self.seen.items())))


def _worker_init(_: int) -> None:
    # Each worker decodes with its own bounded threads; torch's intra-op pool would otherwise spawn one thread
    # per core in every worker and oversubscribe the CPU the GPUs' input depends on.
    torch.set_num_threads(1)


def make_loader(dataset: VideoClipDataset, *, batch_size: int, num_workers: int = 4, shuffle: bool | None = None,
                sampler: torch.utils.data.Sampler | None = None, pin_memory: bool = True, prefetch_factor: int = 2,
                drop_last: bool | None = None, generator: torch.Generator | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader that keeps accelerators fed: workers with persistent state, pinned memory, prefetching."""
    train = dataset.mode == "train"
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=(train if shuffle is None else shuffle) if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=train_collate if train else eval_collate,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        drop_last=train if drop_last is None else drop_last,
        worker_init_fn=_worker_init,
        generator=generator,
    )
