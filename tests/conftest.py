import pytest
import torch

import video_st  # noqa: F401  (applies compat fixes before timm/transformers import torchvision)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_clip(batch: int = 2, frames: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size)


def write_video(path, *, codec: str = "libx264", num_frames: int = 20, height: int = 48, width: int = 64, fps: int = 10,
                seed: int = 0, faststart: bool = False) -> None:
    """A real encoded video (PyAV): a bright bar moving right over a textured background; frame i has green = 10 i
    so tests can tell frames apart after lossy coding."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
    options = {"movflags": "faststart"} if faststart else {}  # index at the front, as streaming mp4s have it
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            img = background.copy()
            x = (i * 3) % max(1, width - 8)
            img[:, x : x + 8, 0] = 250
            img[..., 1] = min(255, i * 10)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="session")
def video_files(tmp_path_factory):
    """Real H.264 and VP9 files plus every kind of bad file, written once per session."""
    root = tmp_path_factory.mktemp("videos")
    files = {"h264": root / "a.mp4", "vp9": root / "b.webm", "short": root / "short.mp4", "portrait": root / "p.mp4"}
    write_video(files["h264"])
    write_video(files["vp9"], codec="libvpx-vp9", seed=1)
    write_video(files["short"], num_frames=5, seed=2)
    write_video(files["portrait"], height=64, width=48, seed=3)
    good = files["h264"].read_bytes()
    files["empty"] = root / "empty.mp4"
    files["empty"].write_bytes(b"")
    files["truncated"] = root / "truncated.mp4"
    files["truncated"].write_bytes(good[: len(good) * 2 // 5])
    files["garbage"] = root / "garbage.mp4"
    files["garbage"].write_bytes(bytes(range(256)) * 40)
    files["missing"] = root / "missing.mp4"
    files["no_video"] = root / "audio_only.m4a"
    _write_audio_only(files["no_video"])
    return files


def _write_audio_only(path) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(5):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="session")
def tiny_k400(tmp_path_factory):
    """A small generated K400-style set (4 classes, 4 train + 2 val videos each, 16 frames at 66 x 88) with two
    planted corrupt videos (seed 1: an empty training file, a truncated validation file): the data of the engine
    and test-tool tests."""
    from video_st.synthetic.datasets import make_k400_style

    root = tmp_path_factory.mktemp("k400")
    summary = make_k400_style(root, num_classes=4, train_per_class=4, val_per_class=2, num_frames=16, seed=1,
                              corrupt={"truncated": 1, "zero": 1})
    assert {c.split for c in summary.corrupt} == {"train", "val"}
    return summary


@pytest.fixture(scope="session")
def hard_overrides(tmp_path_factory):
    """Overrides of configs/tiny_cpu.yaml for a small hard-style set with its masks (4 classes, 1 train + 2 val
    videos each, 16 frames of 64 x 64) at the suite's clip geometry: the oracle's and the masks' training tests.
    No data.test: the test split the oracle scores (as the suite does) is the val file."""
    from video_st.synthetic.datasets import make_hard_style

    s = make_hard_style(tmp_path_factory.mktemp("hard") / "data", num_classes=4, train_per_class=1,
                        val_per_class=2, num_frames=16, seed=4)
    return [f"data.root={s.root}", f"data.train={s.annotation_files['train']}",
            f"data.val={s.annotation_files['val']}",
            "data.size=64", "data.short_side=64", "data.num_frames=8", "data.stride=2",
            "model.num_classes=4", "model.pretrained=none", "data.num_workers=0",
            "test.spatial_views=1", "test.temporal_views=1"]


def tiny_overrides(summary, output_dir, *extra: str) -> list[str]:
    """Overrides of configs/tiny_cpu.yaml that point it at ``summary`` (a generated set) and ``output_dir``; the
    tests train the frozen-backbone methods on a random backbone on purpose (``model.pretrained=none``) unless
    they give one."""
    return ["model.pretrained=none", f"data.root={summary.root}", f"data.train={summary.annotation_files['train']}",
            f"data.val={summary.annotation_files['val']}", f"output_dir={output_dir}", "data.num_workers=0",
            "log.progress=false", "log.tensorboard=false", "data.hflip=none", *extra]


def python_launcher(nproc: int = 1) -> list[str]:
    """The interpreter, or torchrun with ``nproc`` processes on a concrete free port (with --master_port 0
    the workers do not learn the port the agent picked)."""
    import socket
    import sys

    if nproc == 1:
        return [sys.executable]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]


def assert_outputs_and_grads_close(model, ours, literal) -> None:
    """``ours`` and a literal re-implementation's ``literal`` (outputs of ``model``'s input) agree, and so do the
    gradients of the trainable parameters of a loss on each."""
    import torch

    torch.testing.assert_close(ours, literal, rtol=1e-5, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    grads_ours = torch.autograd.grad(ours.square().sum(), params, retain_graph=True)
    grads_literal = torch.autograd.grad(literal.square().sum(), params, retain_graph=True)
    for g_ours, g_literal in zip(grads_ours, grads_literal, strict=True):
        torch.testing.assert_close(g_ours, g_literal, rtol=1e-4, atol=1e-5)
