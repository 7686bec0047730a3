"""Export a trained model to ONNX or TorchScript, verified against PyTorch before anything is written.

``export_checkpoint(path, out, fmt=...)`` (tools/export.py): the checkpoint is loaded by its spec (any file or
folder ``engine.loading`` reads), LoRA merged into the frozen weights, eval mode, fp32; the graph takes
``x`` of shape (B, 3, frames, size, size) from the spec and returns ``logits`` (B, classes).

What is exported: the dense model and every method whose inference graph is static: adapters as they are, LoRA
merged, VPT's prompts, and the token reducers with a fixed keep count (Sparse-Tuning's and EViT's top-k by [CLS]
attention + fuse, ToMe's merging): the top-k *selection* is an op of the graph, only the count is fixed, so the
file keeps choosing tokens per clip. Input-dependent methods (DyT's dispatcher, AS-ViT's thresholds:
``model.input_dependent``) are refused: their token counts depend on the input, and a trace would freeze the
decisions of the one clip it was traced with.

The batch axis is dynamic in both formats: parity is checked at batch ``B`` on one seeded clip and at ``B + 1``
on another (different data, so different top-k choices), each against the eager model. The file and
``OUT.json`` (spec, format, opset, input, parity) are written atomically only when the largest absolute
difference is within ``tolerance`` (1e-4); otherwise nothing is written and :class:`ExportError` says by how much.

ONNX goes through ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript). Its torchlib has no
translation for ``aten.sort.stable`` (the reducers' stable argsort), and the legacy TorchScript-based exporter
refuses it too; it is translated here as ONNX ``TopK`` over the whole axis, which orders equal values by lower
index first, as a stable sort does. TorchScript goes through ``torch.jit.trace`` (shapes are recorded
symbolically, so the batch stays free; token counts are the spec's).

``benchmark_latency`` times eager PyTorch, onnxruntime and TorchScript side by side on the CPU (interleaved
rounds, medians, ratios to eager); tools/export.py runs it with ``--benchmark``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import VideoSTError
from ..fileio import write_atomic
from ..models.sparsify import TopKFuse
from ..models.spec import ModelSpec
from .loading import load

FORMATS = ("onnx", "torchscript")
OPSET = 18
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "x", "logits"
_WHY_INPUT_DEPENDENT = {
    "dyt": "its dispatcher decides per token and per clip which tokens skip each MLP",
    "asvit": "its learnt thresholds prune a different number of tokens per clip",
}


class ExportError(VideoSTError):
    """A model that cannot be exported as asked, or an export that does not reproduce the model."""


# -- preparation ----------------------------------------------------------------------------------------------
def refusal(model: nn.Module, spec: ModelSpec) -> str | None:
    """Why ``model`` cannot be exported (one line), or None."""
    if getattr(model, "input_dependent", False):
        why = _WHY_INPUT_DEPENDENT.get(spec.method, "its computed tokens depend on the input")
        return (f"method {spec.method!r} is input-dependent and is not exported: {why}, so its token counts depend "
                "on the input; a traced graph would freeze the decisions of the one clip it was traced with")
    if any(isinstance(m, TopKFuse) and m.score == "random" for m in model.modules()):
        return (f"method {spec.method!r} with score='random' is not exported: it draws the kept tokens at random "
                "on every forward (the control of selection ablations); a traced graph would freeze one draw")
    return None


def prepare(model: nn.Module) -> nn.Module:
    """What inference runs: LoRA merged, eval mode, fp32, no gradients."""
    if hasattr(model, "merge_lora"):
        model.merge_lora()
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def input_shape(spec: ModelSpec, batch: int) -> tuple[int, int, int, int, int]:
    frames, size = spec.clip
    return (batch, int(spec.backbone.get("in_chans", 3)), frames, size, size)


def seeded_clip(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- the two formats ------------------------------------------------------------------------------------------
def _sort_stable(self, stable=None, dim: int = -1, descending: bool = False):  # noqa: ANN001, ANN202
    """ONNX translation of ``aten.sort.stable``: TopK over the whole axis (ties: lower index first)."""
    from onnxscript import opset18 as op

    k = op.Gather(op.Shape(self), op.Constant(value_ints=[dim]))
    values, indices = op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as err:
        raise ExportError(f"ONNX export needs {module}: pip install -e '.[export]' (onnx, onnxruntime, "
                          "onnxscript)") from err


def _quiet() -> contextlib.AbstractContextManager:
    """The exporters print progress and warn about things that do not matter here (e.g. TracerWarnings)."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def to_onnx_bytes(model: nn.Module, example: torch.Tensor, *, opset: int = OPSET) -> bytes:
    _need("onnxscript"), _need("onnx")
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                dynamo=True, external_data=False, dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                custom_translation_table={torch.ops.aten.sort.stable: _sort_stable})
    except Exception as err:  # the exporter's errors are many kinds; the first line names the op
        raise ExportError(f"ONNX export failed: {type(err).__name__}: {str(err).strip().splitlines()[0][:300]}") from err
    return program.model_proto.SerializeToString()


def to_torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(model, (example,), check_trace=False)
    except Exception as err:
        raise ExportError(f"TorchScript trace failed: {type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0][:300]}") from err
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def onnx_runner(data: bytes, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An onnxruntime CPU session; ``threads`` also turns off the pool's spin-waiting, which would otherwise keep
    the cores busy after each run and slow whatever runs next (the interleaved eager and TorchScript rounds)."""
    ort = _need("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])


def torchscript_runner(data: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    module = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def serialize(model: nn.Module, example: torch.Tensor, fmt: str) -> bytes:
    if fmt == "onnx":
        return to_onnx_bytes(model, example)
    if fmt == "torchscript":
        return to_torchscript_bytes(model, example)
    raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def runner(data: bytes, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return onnx_runner(data) if fmt == "onnx" else torchscript_runner(data)


# -- export + parity ------------------------------------------------------------------------------------------
def parity(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], spec: ModelSpec, batch: int,
           seed: int = 0) -> list[dict[str, Any]]:
    """Max abs difference to the eager model at batch ``batch`` (clip ``seed``) and ``batch + 1`` (``seed + 1``)."""
    checks = []
    for b, s in ((batch, seed), (batch + 1, seed + 1)):
        clip = seeded_clip(input_shape(spec, b), s)
        with torch.no_grad():
            want = model(clip)
        got = run(clip)
        if tuple(got.shape) != tuple(want.shape):
            diff = float("inf")
        else:
            diff = float((got.float() - want).abs().max())
        checks.append({"batch": b, "seed": s, "max_abs_diff": diff})
    return checks


def export_model(model: nn.Module, spec: ModelSpec, out: str | os.PathLike, *, fmt: str, batch: int = 1,
                 seed: int = 0, tolerance: float = TOLERANCE, source: str | None = None) -> dict[str, Any]:
    """Export a loaded model (prepared here) to ``out``; returns the record written to ``out + '.json'``."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if batch < 1:
        raise ExportError(f"batch must be >= 1, got {batch}")
    reason = refusal(model, spec)
    if reason is not None:
        raise ExportError(reason)
    model = prepare(model)
    out = os.fspath(out)
    started = time.perf_counter()
    data = serialize(model, seeded_clip(input_shape(spec, batch), seed), fmt)
    checks = parity(model, runner(data, fmt), spec, batch, seed)
    worst = max(c["max_abs_diff"] for c in checks)
    if not worst <= tolerance:
        detail = ", ".join(f"batch {c['batch']}: {c['max_abs_diff']:.3g}" for c in checks)
        raise ExportError(f"{out}: not written: the {fmt} export of {spec.method} differs from PyTorch by "
                          f"{worst:.3g} > {tolerance:g} ({detail})")
    shape = list(input_shape(spec, batch))
    record = {
        "file": os.path.basename(out),
        "format": fmt,
        "exporter": "torch.onnx.export(dynamo=True)" if fmt == "onnx" else "torch.jit.trace",
        "opset": OPSET if fmt == "onnx" else None,
        "torch": torch.__version__,
        "input": {"name": INPUT_NAME, "shape": ["batch", *shape[1:]], "example_batch": batch, "dtype": "float32",
                  "dynamic_batch": True},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", int(spec.backbone.get("num_classes", 0))]},
        "lora_merged": True,
        "spec": spec.to_dict(),
        "source": source,
        "parity": {"max_abs_diff": worst, "tolerance": tolerance,
                   "runtime": "onnxruntime CPUExecutionProvider" if fmt == "onnx" else "torch.jit.load",
                   "checks": checks},
        "export_s": round(time.perf_counter() - started, 3),
    }
    if fmt == "onnx":
        import onnxruntime

        record["onnxruntime"] = onnxruntime.__version__
    write_atomic(out, data)
    write_atomic(sidecar_path(out), json.dumps(record, indent=2) + "\n")
    return record


def sidecar_path(out: str | os.PathLike) -> str:
    return os.fspath(out) + ".json"


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike, *, fmt: str, backbone: str | None = None,
                      batch: int = 1, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Load ``path`` by its spec (``backbone``: for an adapter-only file) and export it (see :func:`export_model`)."""
    loaded = load(os.fspath(path), backbone=backbone)
    return export_model(loaded.model, loaded.spec, out, fmt=fmt, batch=batch, tolerance=tolerance,
                        source=os.fspath(path))


# -- latency --------------------------------------------------------------------------------------------------
def benchmark_latency(model: nn.Module, spec: ModelSpec, *, batch: int = 1, rounds: int = 20, warmup: int = 5,
                      seed: int = 0) -> list[dict[str, Any]]:
    """Median latency of eager PyTorch, onnxruntime (CPU) and TorchScript on one seeded clip, interleaved rounds
    (each round runs every runtime once, in turn), with ratios to eager. Every runtime uses torch's thread count;
    ``warmup`` untimed runs each first (TorchScript's profiling executor optimises the graph after its first runs)."""
    reason = refusal(model, spec)
    if reason is not None:
        raise ExportError(reason)
    model = prepare(model)
    clip = seeded_clip(input_shape(spec, batch), seed)
    threads = torch.get_num_threads()

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    runs = {"pytorch eager": eager,
            "onnxruntime": onnx_runner(to_onnx_bytes(model, clip), threads=threads),
            "torchscript": torchscript_runner(to_torchscript_bytes(model, clip))}
    for run in runs.values():
        for _ in range(warmup):
            run(clip)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(clip)
            seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds["pytorch eager"])
    rows = []
    for name, values in seconds.items():
        median = statistics.median(values)
        rows.append({"arch": spec.arch, "method": spec.method, "input": list(clip.shape), "runtime": name,
                     "median_ms": round(median * 1e3, 3), "ratio_to_eager": round(median / base, 3),
                     "rounds": rounds, "threads": threads})
    return rows


def latency_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| arch | method | input | runtime | median_ms | ratio_to_eager |", "|---|---|---|---|---|---|"]
    for r in rows:
        shape = "x".join(map(str, r["input"]))
        lines.append(f"| {r['arch']} | {r['method']} | {shape} | {r['runtime']} | {r['median_ms']:.3f} | "
                     f"{r['ratio_to_eager']:.3f} |")
    return "\n".join(lines)
