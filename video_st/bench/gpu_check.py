"""tools/gpu_check.py: every CUDA path of the project in one run of at most 5 minutes on one H100/H200, with one
JSON and one table as the result; ``device="cpu"`` runs the same sections on the tiny test model (the test suite
runs it, so the check cannot rot on machines without a GPU).

Each section (gpu_sections.SECTIONS, in order) becomes a :class:`SectionResult`: ``ok``, ``failed`` (its error in
one line, the traceback in the JSON; the other sections still run) or ``skipped`` (the path does not apply here:
fp16 training on a CPU, GPU decoding without CUDA or without the decoder). Exit code 1 if any section failed.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine import distributed
from ..errors import ConfigError
from ..fileio import write_atomic
from .gpu_context import PROFILES, Context, Skipped
from .gpu_sections import SECTIONS
from .measure import machine_info
from .tables import markdown_table

_log = logging.getLogger(__name__)

JSON_FILE, TABLE_FILE = "gpu_check.json", "gpu_check.md"


@dataclass
class SectionResult:
    name: str
    status: str  # ok | failed | skipped
    seconds: float
    budget_s: float
    figures: dict[str, float] = field(default_factory=dict)  # positive measures
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # failed: the error in one line; skipped: the reason
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def select_sections(text: str | None) -> list[str]:
    """``"a,b"`` -> those sections in their running order; None or empty: all. An unknown name is a ConfigError."""
    if not text:
        return list(SECTIONS)
    asked = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in asked if s not in SECTIONS]
    if unknown or not asked:
        what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "no section named"
        raise ConfigError(f"--sections: {what}; known: {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in asked]


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def run_section(name: str, ctx: Context, budget_s: float) -> SectionResult:
    section, _ = SECTIONS[name]
    start = time.perf_counter()
    try:
        figures, details = section(ctx, budget_s)
        bad = {k: v for k, v in figures.items() if not (isinstance(v, (int, float)) and v > 0)}
        if bad:
            raise RuntimeError(f"figures not positive: {bad}")
        result = SectionResult(name, "ok", 0.0, budget_s, {k: float(v) for k, v in figures.items()}, details)
    except Skipped as why:
        result = SectionResult(name, "skipped", 0.0, budget_s, error=str(why))
    except Exception as err:  # a failed section is recorded; the others still run
        _log.debug("section %s failed", name, exc_info=True)
        result = SectionResult(name, "failed", 0.0, budget_s, error=_one_line(err), traceback=traceback.format_exc())
    finally:
        ctx.release()
    result.seconds = round(time.perf_counter() - start, 2)
    return result


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: versions of torch, CUDA, cuDNN, DeepSpeed, and the GPU."""

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    info = machine_info(device)
    info.update(python=platform.python_version(), cpu_count=os.cpu_count(), cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                deepspeed=version("deepspeed"), torchvision=version("torchvision"), torchcodec=version("torchcodec"))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count())
    return info


def check_out(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out}: exists and is not a folder")
    for name in (JSON_FILE, TABLE_FILE):
        if os.path.isdir(os.path.join(out, name)):
            raise ConfigError(f"--out {out}: {name} is a folder")


def _prepare(ctx: Context, names: Sequence[str], *, cuda: bool) -> None:
    """The generated data first, while no CUDA context exists yet (the frames job forks its workers). A failure
    here is not fatal: each section that needs the data fails with it, the others run."""
    needs_videos = set(SECTIONS) - {"batch_augment", "asvit_key_masks", "dyt_gather_scatter",
                                    "inference_dense_vs_sparse", "decode_nvjpeg"}
    try:
        if needs_videos & set(names):
            ctx.videos()
        if "data_frames" in names or (cuda and "decode_nvjpeg" in names):
            ctx.frames()
    except Exception as err:
        _log.warning("making the generated data failed (the sections that need it fail with it): %s", err)


def run_check(*, device: str = "cuda", out: str = "outputs/gpu_check", sections: Sequence[str] | None = None,
              quick: bool = False, on_result: Callable[[SectionResult], None] | None = None) -> dict[str, Any]:
    """Run ``sections`` (default: all) on ``device``; write OUT/gpu_check.json and OUT/gpu_check.md; return the
    report. Bad input (a device that is not here, an unusable ``out``) is a ConfigError before anything runs."""
    names = list(SECTIONS) if sections is None else list(sections)
    if device not in PROFILES:
        raise ConfigError(f"--device {device}: expected one of {', '.join(PROFILES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible here; use --device cpu (the same sections on "
                          "the tiny test model)")
    check_out(out)
    env = distributed.detect()
    if env.world_size > 1:
        raise ConfigError(f"gpu_check runs as one process (this launch has world size {env.world_size})")
    profile = PROFILES[device].quick() if quick else PROFILES[device]
    start, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        ctx = Context(profile, torch.device("cpu"), work, env)
        try:
            _prepare(ctx, names, cuda=device == "cuda")
            ctx.device = distributed.select_device(env, device)
            info = machine(ctx.device)
            for name in names:
                budget = SECTIONS[name][1] * (0.5 if quick else 1.0)
                result = run_section(name, ctx, budget)
                results.append(result)
                if on_result is not None:
                    on_result(result)
        finally:
            distributed.shutdown()
    report = {
        "tool": "tools/gpu_check.py", "device": device, "quick": quick, "machine": info,
        "profile": {k: str(v) if isinstance(v, torch.dtype) else v for k, v in dataclasses.asdict(profile).items()},
        "setup_seconds": ctx.setup_seconds, "total_seconds": round(time.perf_counter() - start, 2),
        "failed": [r.name for r in results if r.status == "failed"],
        "skipped": [r.name for r in results if r.status == "skipped"],
        "sections": [{**dataclasses.asdict(r), "ok": r.ok} for r in results],
    }
    os.makedirs(out, exist_ok=True)
    write_atomic(os.path.join(out, JSON_FILE), json.dumps(report, indent=1) + "\n")
    write_atomic(os.path.join(out, TABLE_FILE), markdown(report) + "\n")
    return report


def _figure(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def markdown(report: dict[str, Any]) -> str:
    """The table: one row per section (status, seconds against its budget, figures), the machine above it."""
    m = report["machine"]
    where = m.get("gpu") or f"CPU ({m['cpu_count']} cores)"
    cuda = f"CUDA {m['cuda']}, cuDNN {m['cudnn']}" if m.get("gpu") else "no CUDA"
    head = (f"GPU check on {where}: torch {m['torch']}, {cuda}, DeepSpeed {m['deepspeed']}; "
            f"{report['total_seconds']:.0f} s in all"
            + (f" (setup: {', '.join(f'{k} {v:.1f} s' for k, v in report['setup_seconds'].items())})"
               if report["setup_seconds"] else "") + ("; --quick" if report["quick"] else ""))
    status = {"ok": "ok", "failed": "FAILED: ", "skipped": "skipped: "}
    rows = [{"section": s["name"], "status": status[s["status"]] + (s["error"] or ""),
             "seconds (budget)": f"{s['seconds']:.1f} ({s['budget_s']:.0f})",
             "figures": ", ".join(f"{k} {_figure(v)}" for k, v in s["figures"].items())} for s in report["sections"]]
    return head + "\n\n" + markdown_table(rows, ["section", "status", "seconds (budget)", "figures"])


def exit_code(report: dict[str, Any]) -> int:
    return 1 if report["failed"] else 0
