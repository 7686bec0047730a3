"""Transforms, annotation readers, the bad-file policy and the loaders, on real encoded files."""

import json
import random
import shutil

import numpy as np
import pytest
import torch

from video_st.data.annotations import (
    AnnotationError,
    VideoRecord,
    read_k400_csv,
    read_ssv2,
    save_class_names,
)
from video_st.data.lists import read_frame_list, read_path_label_list
from video_st.data.sampling import ClipSpec
from video_st.data.datasets import (
    BadFileLog,
    MissingVideosError,
    VideoClipDataset,
    check_files,
    eval_collate,
    make_loader,
    train_collate,
)
from video_st.data.decode import open_video
from video_st.data.transforms import EvalTransform, TrainTransform, make_mixup, spatial_crop, to_video


def test_train_transform_uses_one_draw_for_all_frames():
    frame = np.random.default_rng(0).integers(0, 255, (1, 72, 96, 3), dtype=np.uint8)
    clip = np.repeat(frame, 8, axis=0)
    out, label = TrainTransform(size=32)(clip, 3, random.Random(0))
    assert out.shape == (3, 8, 32, 32) and out.dtype == torch.float32 and label == 3
    assert all(torch.equal(out[:, 0], out[:, t]) for t in range(8))


def test_ssv2_flip_policy():
    clip = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    clip[:, :, :8] = 255  # bright on the left
    exact = dict(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), rand_augment=None)
    never = TrainTransform(hflip="none", **exact)
    assert all(never(clip, 0, random.Random(s))[0][0, 0, :, :8].mean() > 1 for s in range(10))
    swap = TrainTransform(hflip="swap", label_swap={0: 1}, **exact)
    results = [swap(clip, 0, random.Random(s)) for s in range(10)]
    flipped = [lab for video, lab in results if video[0, 0, :, -8:].mean() > 1]
    kept = [lab for video, lab in results if video[0, 0, :, :8].mean() > 1]
    assert flipped and kept and set(flipped) == {1} and set(kept) == {0}
    with pytest.raises(ValueError, match="label_swap"):
        TrainTransform(hflip="swap")


def test_a_mask_follows_its_clip_through_crop_and_flip():
    # the frames are the mask itself (white object, black ground, moving per frame): wherever the crop, zoom and
    # flip put the object's pixels, the mask must be there too
    mask = np.zeros((4, 48, 64), dtype=bool)
    for t in range(4):
        mask[t, 8 + 4 * t : 24 + 4 * t, 4 + 6 * t : 20 + 6 * t] = True
    frames = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=-1)
    transform = TrainTransform(size=32, scale=(0.3, 1.0), hflip="flip", rand_augment=None, output="uint8")
    sides = set()
    for seed in range(12):
        torch.manual_seed(seed)  # the crop's draw
        video, label, out = transform.apply(frames, 5, random.Random(seed), mask=mask)
        assert out.shape == (4, 32, 32) and out.dtype == torch.bool and label == 5
        seen = video[0] > 127  # the object's pixels where the transform put them
        assert (seen == out).float().mean() > 0.97
        if seen.any():  # IoU 0.73-0.93 (antialiased frames, nearest-neighbour mask); mirrored it is < 0.2
            assert (seen & out).sum() / (seen | out).sum() > 0.65
        sides.add(bool(out[0, :, 16:].sum() > out[0, :, :16].sum()))  # frame 0's object: left unless flipped
    assert sides == {True, False}  # some draws flipped it, some did not
    with pytest.raises(ValueError, match="RandAugment takes no masks"):
        TrainTransform(size=32, rand_augment=(2, 9)).apply(frames, 0, random.Random(0), mask=mask)


def test_three_crop_left_centre_right_and_portrait():
    video = torch.arange(32 * 96).reshape(1, 1, 32, 96).expand(2, 3, -1, -1)
    crops = [spatial_crop(video, 32, i) for i in range(3)]
    assert [int(c[0, 0, 0, 0]) for c in crops] == [0, 32, 64]
    portrait = video.transpose(-1, -2)
    assert [int(spatial_crop(portrait, 32, i)[0, 0, 0, 0]) for i in range(3)] == [0, 32, 64]
    views = EvalTransform(size=32, num_crops=3).all_crops(np.zeros((4, 72, 96, 3), dtype=np.uint8))
    assert len(views) == 3 and views[0].shape == (3, 4, 32, 32)


def test_cutmix_cuts_space_not_time():
    torch.manual_seed(0)
    mix = make_mixup(num_classes=4, cutmix_prob=1.0, label_smoothing=0.0)
    x = torch.stack([torch.zeros(3, 8, 32, 32), torch.ones(3, 8, 32, 32)])
    mixed, labels = mix(x.clone(), torch.tensor([0, 1]))  # pytorchvideo mixes in place
    box = mixed[0] != x[0]
    assert box.any() and all(torch.equal(box[:, 0], box[:, t]) for t in range(8))  # the same box in every frame
    assert labels.shape == (2, 4) and torch.allclose(labels.sum(1), torch.ones(2))


def test_k400_csv(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "abc_000001_000011.mp4").write_bytes(b"x")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end,split,is_cc\n"
                        "zumba,abc,1,11,train,0\n\"abseiling\",xyz,0,10,train,0\n")
    records, names = read_k400_csv(csv_path, tmp_path)
    assert names == ["abseiling", "zumba"] and [r.label for r in records] == [1, 0]
    assert records[0].path == str(tmp_path / "train" / "abc_000001_000011.mp4")  # found under SPLIT/
    assert records[1].path == str(tmp_path / "xyz_000000_000010.mp4")  # not found: the flat default, reported later
    save_class_names(names, tmp_path / "classes.json")
    assert json.loads((tmp_path / "classes.json").read_text()) == names
    csv_path.write_text("label,youtube_id,time_start,time_end,split\nzumba,abc,one,11,train\n")
    with pytest.raises(AnnotationError, match=r"train.csv:2: time_start 'one' is not an integer"):
        read_k400_csv(csv_path, tmp_path)
    csv_path.write_text("label,youtube_id,time_start,time_end,split\nzumba,abc\n")
    with pytest.raises(AnnotationError, match=r"train.csv:2: expected 5 comma-separated fields, got 2"):
        read_k400_csv(csv_path, tmp_path)
    csv_path.write_text("label,youtube_id,time_start,time_end,split\nnew class,abc,1,11,val\n")
    with pytest.raises(AnnotationError, match="not among the 2 classes"):
        read_k400_csv(csv_path, tmp_path, class_names=names)


def test_ssv2_json(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"Moving something from left to right": "0",
                                                      "Moving something from right to left": "1"}))
    entries = [{"id": "7", "label": "moving a cup from right to left", "template": "Moving [something] from right to left",
                "placeholders": ["a cup"]}]
    (tmp_path / "train.json").write_text(json.dumps(entries))
    records, names = read_ssv2(tmp_path / "labels.json", tmp_path / "train.json", tmp_path / "videos")
    assert names[1] == "Moving something from right to left"
    assert records == [VideoRecord(str(tmp_path / "videos" / "7.webm"), 1, "7", rel="7.webm")]
    (tmp_path / "train.json").write_text(json.dumps(entries + [{"id": "8", "template": "Dropping [something]"}]))
    with pytest.raises(AnnotationError, match=r"entry 1 \(id 8\).*Dropping something"):
        read_ssv2(tmp_path / "labels.json", tmp_path / "train.json", tmp_path)


def test_lists(tmp_path):
    (tmp_path / "list.txt").write_text("a dir/v 1.mp4 3\n\nb.mp4 0\n")
    assert [(r.path, r.label) for r in read_path_label_list(tmp_path / "list.txt", "/data")] == [
        ("/data/a dir/v 1.mp4", 3), ("/data/b.mp4", 0)]
    (tmp_path / "list.txt").write_text("a.mp4 3\nb.mp4 zero\n")
    with pytest.raises(AnnotationError, match="list.txt:2"):
        read_path_label_list(tmp_path / "list.txt")
    (tmp_path / "frames.txt").write_text("v1 30 2\nv2 x 1\n")
    with pytest.raises(AnnotationError, match="frames.txt:2"):
        read_frame_list(tmp_path / "frames.txt")


def test_missing_files_reported_together(tmp_path, video_files):
    records = [VideoRecord(str(video_files["h264"]), 0, "a")] + [
        VideoRecord(str(tmp_path / f"gone{i}.mp4"), 0, f"g{i}") for i in range(3)]
    with pytest.raises(MissingVideosError, match="3 videos of train.csv are missing") as info:
        check_files(records, source="train.csv")
    assert len(info.value.missing) == 3
    assert len(check_files(records, source="train.csv", missing="skip")) == 1
    (tmp_path / "invalid.txt").write_text(f"{video_files['h264']}\tcannot open\n")
    assert check_files(records[:1], source="x", missing="skip", invalid_list=tmp_path / "invalid.txt") == []


@pytest.fixture()
def planted(tmp_path, video_files):
    """A training folder of good videos with planted corrupt ones."""
    records = []
    for i in range(6):
        shutil.copy(video_files["h264" if i % 2 else "vp9"], tmp_path / f"good{i}.mp4")
        records.append(VideoRecord(str(tmp_path / f"good{i}.mp4"), i % 2, f"good{i}"))
    for kind in ("empty", "truncated", "garbage"):
        shutil.copy(video_files[kind], tmp_path / f"bad_{kind}.mp4")
        records.append(VideoRecord(str(tmp_path / f"bad_{kind}.mp4"), 0, kind))
    return records


def test_training_loader_yields_only_good_clips_and_reports_bad_ones(planted, tmp_path):
    clip = ClipSpec(sampling="dense", num_frames=4, stride=2)
    dataset = VideoClipDataset(planted, mode="train", clip=clip, transform=TrainTransform(size=32), seed=1)
    loader = make_loader(dataset, batch_size=3, num_workers=2, generator=torch.Generator().manual_seed(0))
    log, seen = BadFileLog(), []
    for _ in range(3):
        for batch in loader:
            assert batch["video"].shape[1:] == (3, 4, 32, 32) and torch.isfinite(batch["video"]).all()
            seen += [planted[i].video_id for i in batch["index"]]
            log.record(batch["failed"])
    assert all(v.startswith("good") for v in seen)
    bad = {r.path for r in planted if not r.video_id.startswith("good")}
    assert set(log.seen) <= bad and len(log.seen) >= 2  # every epoch meets the bad files; each logged once
    log.write(tmp_path / "bad.txt")
    assert len((tmp_path / "bad.txt").read_text().splitlines()) == len(log.seen)


def test_repeated_augmentation(planted):
    dataset = VideoClipDataset(planted[:2], mode="train", clip=ClipSpec(num_frames=4, stride=2), repeats=2,
                               transform=TrainTransform(size=32))
    item = dataset[0]
    assert item["video"].shape == (2, 3, 4, 32, 32) and item["label"].tolist() == [0, 0]


def test_masks_travel_with_their_clips_and_a_mask_that_does_not_fit_is_a_bad_video(planted):
    good = planted[:2]
    source = open_video(good[0].path)
    height, width = source.read([0]).shape[1:3]
    masks = {good[0].video_id: np.ones((source.num_frames, height, width), dtype=bool),
             good[1].video_id: np.ones((1, height, width), dtype=bool)}  # one frame for a longer video
    dataset = VideoClipDataset(good, mode="train", clip=ClipSpec(num_frames=4, stride=2), repeats=2, masks=masks,
                               transform=TrainTransform(size=32, rand_augment=None))
    item = dataset[0]
    assert item["foreground"].shape == (2, 4, 32, 32) and item["foreground"].all() and not item["failed"]
    batch = train_collate([item, dataset[0]])
    assert batch["foreground"].shape == (4, 4, 32, 32)  # the repeats flattened into the batch, as the clips are
    replaced = dataset[1, 5]  # (index, augmentation seed): the replacement drawn is the same every run
    assert replaced["index"] == 0 and "foreground" in replaced
    (path, cause), *_ = replaced["failed"]
    assert path == good[1].path and cause.startswith("its mask has 1 frames")


def test_test_mode_never_replaces_a_bad_video(planted, video_files, tmp_path):
    clip = ClipSpec(sampling="dense", num_frames=4, stride=4, num_temporal_views=2, num_spatial_views=3)
    long = tmp_path / "long_truncated.mp4"
    from .conftest import write_video

    write_video(tmp_path / "long.mp4", num_frames=120, faststart=True)
    data = (tmp_path / "long.mp4").read_bytes()
    long.write_bytes(data[: len(data) * 3 // 5])  # index at the front: it opens, the late frames fail
    records = planted + [VideoRecord(str(long), 1, "long_truncated")]
    dataset = VideoClipDataset(records, mode="test", clip=clip, transform=EvalTransform(size=32, num_crops=3))
    items = [dataset[i] for i in range(len(dataset))]
    good = [it for it in items if it["video_id"].startswith("good")]
    assert all(it["views"].shape == (6, 3, 4, 32, 32) and it["error"] is None for it in good)
    failed = {it["video_id"]: it["error"] for it in items if it["views"] is None}
    assert {"empty", "garbage"} <= set(failed) and "empty file" in failed["empty"]
    batch = eval_collate(items)
    assert batch["views"].shape[0] == sum(it["views"].shape[0] for it in items if it["views"] is not None)
    assert {f["path"] for f in batch["failed"]} == {it["path"] for it in items if it["views"] is None}
    partial = [it for it in items if it["video_id"] == "long_truncated"][0]
    # The early temporal view decodes, the late one does not: 3 of 6 views, reported, never replaced.
    assert partial["view_ok"] == [True] * 3 + [False] * 3 and partial["views"].shape[0] == 3
    assert partial["error"] == "3 of 6 views failed to decode"
    assert [p["path"] for p in batch["partial"]] == [str(long)]


def test_frame_folder_dataset(tmp_path, video_files):
    from PIL import Image

    from video_st.data.decode import read_frames

    folder = tmp_path / "frames" / "v1"
    folder.mkdir(parents=True)
    for i, frame in enumerate(read_frames(video_files["h264"], range(20))):
        Image.fromarray(frame).save(folder / f"img_{i + 1:05d}.jpg")
    (tmp_path / "frames.txt").write_text("v1 20 2\n")
    records = read_frame_list(tmp_path / "frames.txt", tmp_path / "frames")
    dataset = VideoClipDataset(records, mode="train", clip=ClipSpec(sampling="segment", num_frames=8, stride=1),
                               transform=TrainTransform(size=32, hflip="none"))
    assert dataset[0]["video"].shape == (3, 8, 32, 32) and dataset[0]["label"] == 2


def test_normalize_matches_the_formula():
    from video_st.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

    video = to_video(np.random.default_rng(0).integers(0, 256, (4, 8, 10, 3), dtype=np.uint8))
    expected = (video.as_subclass(torch.Tensor).float().div(255).permute(1, 0, 2, 3)
                - torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    out = normalize(video)
    assert out.shape == (3, 4, 8, 10) and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
