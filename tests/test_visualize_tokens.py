"""tools/visualize_tokens.py and video_st/viz: run as a user runs it, on a real H.264 file and a saved tiny
Sparse-Tuning model; the drawn frames are the model's input, and exactly the tokens the model dropped are dimmed,
per stage and frame."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from video_st import create_model
from video_st.data.annotations import VideoRecord
from video_st.data.datasets import ClipSpec, VideoClipDataset
from video_st.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform
from video_st.models.spec import save_model_file
from video_st.viz.draw import GAP, TITLE_H, dim, draw_all, slug, tile_origin
from video_st.viz.tokens import Geometry, VisualizeError, kept_masks, kept_per_frame, stage_labels

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "visualize_tokens.py"
TINY = str(ROOT / "configs" / "tiny_cpu.yaml")
SCALE = 2  # 32 px frames -> 64 px tiles; each source pixel is a 2 x 2 block
FRAMES, TUBELET, SIZE, PATCH = 4, 2, 32, 8  # vit_tiny_test in configs/tiny_cpu.yaml: grid (2, 4, 4)


def _run(args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A model_final.pt-style file (what training exports) of a random tiny Sparse-Tuning model."""
    torch.manual_seed(5)
    model = create_model("vit_tiny_test", method="sparse_tuning", num_classes=4, sparse_layers=(2, 3), keep_rate=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pt"
    save_model_file(path, model.state_dict(), spec=model.spec.with_classes(["a", "b", "c", "d"]))
    return path, model.eval()


def _args(ckpt, video, out, *extra):
    # The file's spec rebuilds the model (keep rate 0.5); the config only has to agree with it.
    return ["--config", TINY, "--checkpoint", str(ckpt), "--video", str(video), "--out", str(out),
            "--scale", str(SCALE), f"output_dir={out.parent}", "data.num_workers=0", *extra]


def _model_view(video) -> tuple[torch.Tensor, np.ndarray]:
    """The centre view (1 temporal x crop 1 of 3, tiny_cpu's test views) built here independently, and its
    pixels as uint8 (T, H, W, 3)."""
    dataset = VideoClipDataset([VideoRecord(str(video), -1, "a")], mode="test",
                               clip=ClipSpec(sampling="dense", num_frames=FRAMES, stride=2, num_temporal_views=1,
                                             num_spatial_views=3),
                               transform=EvalTransform(size=SIZE, short_side=SIZE, num_crops=3), backend="decord")
    clip = dataset[0]["views"][1]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    pixels = ((clip * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()
    return clip, pixels


def _tile(image: np.ndarray, row: int, col: int, col_labels: bool) -> np.ndarray:
    """Tile (row, col) of a render_grid image, back at source resolution (every SCALE-th pixel)."""
    x, y = tile_origin(row, col, SIZE * SCALE, SIZE * SCALE, col_labels)
    return image[y:y + SIZE * SCALE:SCALE, x:x + SIZE * SCALE:SCALE]


def _check_overlay(drawn: np.ndarray, frame: np.ndarray, kept: set[int], step: int) -> tuple[int, int]:
    """Every patch of ``drawn`` is the frame's pixels where the token is kept, the dimmed pixels where it was
    dropped; returns (kept, dropped) patch counts."""
    counts = [0, 0]
    for h in range(SIZE // PATCH):
        for w in range(SIZE // PATCH):
            block = np.s_[h * PATCH:(h + 1) * PATCH, w * PATCH:(w + 1) * PATCH]
            token = step * (SIZE // PATCH) ** 2 + h * (SIZE // PATCH) + w
            if token in kept:
                assert np.array_equal(drawn[block], frame[block]), f"kept token {token} altered"
            else:
                assert np.array_equal(drawn[block], dim(frame[block])), f"dropped token {token} not dimmed"
                assert not np.array_equal(drawn[block], frame[block])
            counts[token not in kept] += 1
    return counts[0], counts[1]


def test_draws_exactly_the_tokens_each_stage_kept(checkpoint, video_files, tmp_path):
    ckpt, model = checkpoint
    out = tmp_path / "vis"
    result = _run(_args(ckpt, video_files["h264"], out))
    assert result.returncode == 0, result.stderr
    stdout = result.stdout

    clip, frames = _model_view(video_files["h264"])
    with torch.no_grad():
        _, kept = model.forward_features(clip[None], return_token_ids=True)
    kept_sets = [{int(i) for i in ids[0] if i >= 0} for ids in kept]
    assert len(kept_sets) == 2 and 0 < len(kept_sets[1]) < len(kept_sets[0]) < 32

    tile = SIZE * SCALE
    gap, title = GAP, TITLE_H
    overview = np.asarray(Image.open(out / "overview.png").convert("RGB"))
    # rows: input + 2 stages under a band of frame labels; columns: the 4 frames
    assert overview.shape == (gap + title + 3 * (title + tile + gap), gap + FRAMES * (tile + gap), 3)
    for f in range(FRAMES):
        assert np.array_equal(_tile(overview, 0, f, True), frames[f])  # what the model saw
    labels = stage_labels(model, len(kept))  # the model's stage_names(): "layer 2", "layer 3"
    for s, (label, ids) in enumerate(zip(labels, kept_sets, strict=True)):
        stage_png = np.asarray(Image.open(out / f"stage{s + 1}_{slug(label)}.png").convert("RGB"))
        # rows: tubelet steps; columns: the frames of the step
        assert stage_png.shape == (gap + 2 * (title + tile + gap), gap + TUBELET * (tile + gap), 3)
        for f in range(FRAMES):
            step = f // TUBELET
            counts = _check_overlay(_tile(overview, s + 1, f, True), frames[f], ids, step)
            in_stage_png = _tile(stage_png, step, f % TUBELET, False)
            assert counts == _check_overlay(in_stage_png, frames[f], ids, step)
        per_frame = len(ids) / 2  # 2 tubelet steps of 2 frames each: the mean over frames
        assert f"stage {s + 1} ({label}): kept {per_frame:.1f} of 16 grid tokens per frame" in stdout

    gif = Image.open(out / "tokens.gif")
    assert gif.n_frames == FRAMES and gif.info["loop"] == 0
    assert gif.size == (gap + 3 * (tile + gap), gap + title + title + tile + gap)  # input + 2 stages side by side
    assert f"wrote {out / 'tokens.gif'}" in stdout


@pytest.mark.parametrize("case", ["missing", "garbage", "no_stages", "verbose"])
def test_bad_input_exits_2_naming_the_file(checkpoint, video_files, tmp_path, case):
    ckpt, _ = checkpoint
    video, extra = video_files["h264"], []
    if case == "no_stages":
        torch.manual_seed(0)
        dense = create_model("vit_tiny_test", method="dense_adapter", num_classes=4)
        ckpt = tmp_path / "dense.pt"
        save_model_file(ckpt, dense.state_dict(), spec=dense.spec)
        extra = ["model.method=dense_adapter"]
    elif case == "verbose":  # -v: the same line, then the traceback
        video, extra = video_files["missing"], ["-v"]
    else:
        video = video_files[case]
    out = tmp_path / "vis"
    result = _run(_args(ckpt, video, out, *extra))
    assert result.returncode == 2
    err = result.stderr
    named = ckpt if case == "no_stages" else video
    assert f"error: {named}" in err and ("Traceback" in err) == (case == "verbose")
    assert {"missing": "no such file", "verbose": "no such file", "garbage": "cannot open",
            "no_stages": "no token-reduction stages"}[case] in err
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


class _Stub:
    def __init__(self, **attrs):
        self.__dict__.update(attrs)


def test_stage_labels_are_the_models_names():
    assert stage_labels(create_model("vit_base_patch16", method="evit"), 3) == ["layer 4", "layer 7", "layer 10"]
    dyt = create_model("vit_tiny_test", method="dyt")
    assert stage_labels(dyt, 4) == [f"layer {i} MLP" for i in range(1, 5)]
    with pytest.raises(VisualizeError, match="names 3 stages"):
        stage_labels(_Stub(stage_names=lambda: ["a", "b", "c"]), 2)


def test_any_number_of_stages_with_padding(tmp_path):
    """DyT-style output: one entry per layer, different lengths, -1 padding; every stage gets its row and file."""
    geo = Geometry(grid=(2, 4, 4), tubelet=2, patch=8, img_size=32)
    kept = [torch.tensor([0, 5, 17, -1, -1]), torch.arange(32), torch.tensor([-1]), torch.tensor([31, 16, 15]),
            torch.tensor([3, -1, 20])]
    masks = kept_masks(kept, geo)
    assert masks.shape == (5, 2, 4, 4) and masks[0].sum() == 3 and masks[1].all() and not masks[2].any()
    assert masks[3][1, 3, 3] and masks[3][1, 0, 0] and masks[3][0, 3, 3] and masks[3].sum() == 3
    assert kept_per_frame(masks[0], geo).tolist() == [2, 2, 1, 1]
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    labels = [f"layer {i}" for i in range(1, 6)]
    written = draw_all(frames, masks, labels, geo, scale=1, fps=4, view=(0, 0), out=str(tmp_path))
    assert len(written) == 7 and all(Path(p).exists() for p in written)
    gap, title = GAP, TITLE_H
    assert Image.open(tmp_path / "overview.png").size == (gap + 4 * (32 + gap), gap + title + 6 * (title + 32 + gap))
    assert Image.open(tmp_path / "tokens.gif").size == (gap + 6 * (32 + gap), gap + title + title + 32 + gap)
    with pytest.raises(VisualizeError, match="token id 32"):
        kept_masks([torch.tensor([32])], geo)


def test_viz_init_is_only_its_docstring():
    """Every name of video_st.viz has one import path, its module's (the import arrows: tests/test_imports.py)."""
    body = ast.parse((ROOT / "video_st" / "viz" / "__init__.py").read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value.value, str)
