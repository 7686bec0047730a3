#!/usr/bin/env python
"""Benchmarks, side by side in one run.

model (default): compare methods on one backbone: params, GFLOPs (fvcore convention), inference clips/s, training
step time, bytes saved for backward (and peak GPU memory on CUDA), with ratios to full fine-tuning (dense
backbone) and to the dense-token AdaptFormer adapter.

    python tools/benchmark.py                                  # ViT-B/16, 8 x 224, CPU, fp32
    python tools/benchmark.py --arch vit_tiny_test --frames 4 --img-size 32 --rounds 3   # seconds, for a smoke run
    python tools/benchmark.py --device cuda --dtype bf16 --batch 8 --out docs/benchmarks_gpu.json

methods: every method of video_st.list_methods() on one backbone (default ViT-B/16, 8 x 224), one row each:
trainable params, GFLOPs, inference clips/s, training step time, bytes saved for backward (peak GPU memory on
CUDA), each also as a ratio to full fine-tuning; all measured in one process, timed in interleaved rounds on one
seeded random clip. Inference (GFLOPs, clips/s) is measured with LoRA merged into the weights, training unmerged.
Input-dependent models (``model.input_dependent``) are marked: their FLOPs and times hold for that clip. A method
that fails to build or run keeps a row with its error (exit code 1).

    python tools/benchmark.py methods --rounds 11 --out docs/benchmark_methods_vit_b_cpu.json
    python tools/benchmark.py methods --arch vit_tiny_test --frames 4 --img-size 32 --num-classes 10 --rounds 1
    python tools/benchmark.py methods --device cuda --dtype bf16 --batch 8 --out docs/benchmark_methods_gpu.json

train-methods: on the generated dataset (``make demo``: the K400-style set and the stage-1 backbone), a short
training of each method (tools/train_net.py with --config and model.method=M, one output folder per method),
its multi-view test (tools/test_net.py on the final model, or the best with --test-checkpoint best), the GFLOPs
of the trained model at the config's geometry (input-dependent models: the mean over real test clips), then a
JSON of rows, a markdown table and a plot of test top-1 vs GFLOPs (PNG).

    python tools/benchmark.py train-methods --backbone outputs/demo/backbone.pt --data outputs/demo/k400 \\
        --output-dir outputs/methods --plot docs/methods_accuracy_vs_gflops.png
    python tools/benchmark.py train-methods --methods full,lora --epochs 1 --lr-for lora=1e-2   # a subset

data: clips/s per worker of the training pipeline (decode + transform) vs the raw decord read of the same
frames, and the cost of decoding all temporal test views of a video in one read vs one clip.

    python tools/benchmark.py data                             # generates a K400-style set at 240 x 320
    python tools/benchmark.py data --csv ROOT/annotations/train.csv --root ROOT
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import video_st  # noqa: E402
from video_st.fileio import atomic_open, write_atomic  # noqa: E402
from video_st.profiling import BenchSpec, add_ratios, machine_info, markdown_table, run_benchmark  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COLUMNS = [
    "method", "params_m", "trainable_m", "gflops", "gflops/full", "infer_clips_s", "infer_clips_s/full",
    "train_step_s", "train_step_s/adaptformer", "saved_mb_per_clip", "saved_mb_per_clip/adaptformer",
]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["data"]:
        return data_main(argv[1:])
    if argv[:1] == ["methods"]:
        return methods_main(argv[1:])
    if argv[:1] == ["train-methods"]:
        return train_methods_main(argv[1:])
    if argv[:1] == ["model"]:
        argv = argv[1:]
    return model_main(argv)


def _add_geometry_args(parser: argparse.ArgumentParser) -> None:
    """The backbone geometry and timing options shared by the model and methods tables."""
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--tubelet", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=11,
                        help="timed rounds per model, interleaved; the median is reported, every round is kept in --out")


def _add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-train", action="store_true", help="skip training-step timing and memory")


def model_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py [model]", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_base_patch16", choices=video_st.list_models())
    parser.add_argument("--methods", default="full,adaptformer,dense_adapter,sparse_tuning",
                        help="comma-separated, from: " + ", ".join(video_st.list_methods()))
    _add_geometry_args(parser)
    _add_device_args(parser)
    parser.add_argument("--train-reference", default="adaptformer",
                        help="method the training time and memory ratios are taken against (the dense-token "
                             "adapter baseline: adaptformer, or dense_adapter for Sparse-Tuning's own ablation)")
    parser.add_argument("--out", help="also write the rows and the machine description as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(video_st.list_methods()))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {video_st.list_methods()}")
    spec = BenchSpec(
        arch=args.arch, methods=methods, num_frames=args.frames, img_size=args.img_size, tubelet_size=args.tubelet,
        num_classes=args.num_classes, batch_size=args.batch, rounds=args.rounds, device=args.device,
        dtype=args.dtype, train=not args.no_train,
    )
    rows = run_benchmark(spec, video_st.create_model)
    add_ratios(rows, reference="full", keys=["gflops", "infer_clips_s"], suffix="full")
    ref = args.train_reference
    add_ratios(rows, reference=ref, keys=["train_step_s", "saved_mb_per_clip", "peak_train_mem_mb"], suffix=ref)
    machine = machine_info(args.device)
    columns = [c.replace("/adaptformer", f"/{ref}") for c in COLUMNS]
    columns += ["peak_train_mem_mb", f"peak_train_mem_mb/{ref}"] if args.device.startswith("cuda") else []
    print(f"{args.arch}, {args.frames} x {args.img_size} (tubelet {args.tubelet}), batch {args.batch}, "
          f"{args.device} {args.dtype}, {machine['cpu_threads']} threads, median of {args.rounds} interleaved rounds")
    print(markdown_table(rows, [c for c in columns if any(c in r for r in rows)]))
    if args.out:
        write_atomic(args.out, json.dumps({"args": vars(args), "machine": machine, "rows": rows}, indent=2) + "\n")
    return 0


# -- methods: every method on one backbone, ratios to full fine-tuning ----------------------------------------

METHOD_KEYS = ["trainable_m", "gflops", "infer_clips_s", "train_step_s", "saved_mb_per_clip", "peak_train_mem_mb"]


def _split_methods(parser: argparse.ArgumentParser, text: str | None) -> list[str]:
    known = video_st.list_methods()
    methods = known if not text else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in known]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {known}")
    return methods


def _notes(row: dict[str, Any]) -> str:
    notes = []
    if row.get("input_dependent"):
        notes.append("input-dependent")
    if row.get("lora_merged_for_inference"):
        notes.append("LoRA merged for inference")
    if row.get("error"):
        notes.append(f"error: {row['error']}")
    return "; ".join(notes)


def methods_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_base_patch16", choices=video_st.list_models())
    parser.add_argument("--methods", help="comma-separated subset (default: all of video_st.list_methods(); "
                                          "full is always added, it is the reference)")
    _add_geometry_args(parser)
    parser.add_argument("--seed", type=int, default=0, help="of the one random clip every model sees")
    _add_device_args(parser)
    parser.add_argument("--out", help="also write the rows and the machine description as JSON here (atomically)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    reference = "full"
    methods = _split_methods(parser, args.methods)
    methods = [reference] + [m for m in methods if m != reference]
    spec = BenchSpec(
        arch=args.arch, methods=methods, num_frames=args.frames, img_size=args.img_size, tubelet_size=args.tubelet,
        num_classes=args.num_classes, batch_size=args.batch, rounds=args.rounds, device=args.device,
        dtype=args.dtype, train=not args.no_train, seed=args.seed, keep_going=True,
    )
    rows = methods_table(spec)
    machine = machine_info(args.device)
    print(f"{args.arch}, {args.frames} x {args.img_size} (tubelet {args.tubelet}), batch {args.batch}, "
          f"{args.device} {args.dtype}, {machine['cpu_threads']} threads, median of {args.rounds} interleaved rounds, "
          f"one random clip (seed {args.seed}); x/full = ratio to full fine-tuning")
    print(markdown_table(rows, method_columns(rows)))
    dynamic = [r["method"] for r in rows if r.get("input_dependent")]
    if dynamic:
        print(f"input-dependent (FLOPs and times hold for this clip only): {', '.join(dynamic)}")
    if args.out:
        write_atomic(args.out, json.dumps({"args": vars(args), "machine": machine, "reference": reference,
                                           "rows": rows}, indent=2) + "\n")
    failed = [r["method"] for r in rows if r.get("error")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def methods_table(spec: BenchSpec, reference: str = "full") -> list[dict[str, Any]]:
    """``run_benchmark`` over ``spec.methods`` with every measure also as a ratio to ``reference`` and a notes
    column (input-dependent, LoRA merged for inference, errors)."""
    rows = run_benchmark(spec, video_st.create_model)
    add_ratios(rows, reference=reference, keys=METHOD_KEYS, suffix=reference)
    for row in rows:
        row["notes"] = _notes(row)
    return rows


def method_columns(rows: list[dict[str, Any]], reference: str = "full") -> list[str]:
    columns = ["method"] + [c for key in METHOD_KEYS for c in (key, f"{key}/{reference}")] + ["notes"]
    return [c for c in columns if c in ("method", "notes") or any(c in r for r in rows)]


# -- train-methods: a short training of every method on the generated dataset, test top-1 vs GFLOPs -------------

TRAIN_COLUMNS = ["method", "lr", "epochs", "trainable_m", "gflops", "gflops/full", "test_top1_pct", "test_top5_pct",
                 "mean_class_acc_pct", "best_val_top1_pct", "train_s", "notes"]


def _parse_lr_for(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, float]:
    out = {}
    for item in (p for text in items for p in text.split(",") if p.strip()):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            parser.error(f"--lr-for {item!r}: expected METHOD=LR")
    unknown = sorted(set(out) - set(video_st.list_methods()))
    if unknown:
        parser.error(f"--lr-for: unknown methods {unknown}")
    return out


def _run_logged(cmd: list[str], log_path: str, timeout: float | None) -> tuple[int, float]:
    """Run ``cmd`` from the repository root with stdout and stderr into ``log_path``; (exit code, seconds)."""
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            log.write(f"\ntimed out after {timeout} s\n")
            code = 124
    return code, time.perf_counter() - start


def _tail(path: str, lines: int = 2) -> str:
    """The last lines of a log, on one line (the whole log stays in the run folder)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return " // ".join(line.strip() for line in f.readlines()[-lines:] if line.strip())
    except OSError:
        return ""


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _run_log_summary(output_dir: str) -> dict[str, Any]:
    """From the run's log.jsonl: the best validation top-1, the last epoch's and the optimizer steps."""
    out: dict[str, Any] = {}
    try:
        with open(os.path.join(output_dir, "log.jsonl"), encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return out
    epochs = [r for r in records if r.get("kind") == "epoch"]
    done = [r for r in records if r.get("kind") == "done"]
    if epochs:
        out["last_val_top1"] = epochs[-1].get("val_top1")
        out["steps"] = epochs[-1].get("step")
    if done:
        out["best_val_top1"] = done[-1].get("best_val_top1")
    return out


def _prepare_run_dir(folder: str) -> None:
    """A method's output folder starts empty (log.jsonl appends); only a folder a run wrote is removed."""
    if os.path.isdir(folder) and os.listdir(folder):
        if not any(os.path.exists(os.path.join(folder, f)) for f in ("config.yaml", "log.jsonl", "train.log")):
            raise SystemExit(f"error: {folder} exists and is not a run folder of this tool; choose another --output-dir")
        shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)


def trained_model_gflops(cfg: Any, checkpoint: str | None, flop_clips: int, seed: int) -> dict[str, Any]:
    """Load the trained model as tools/test_net.py does and count its inference GFLOPs (LoRA merged) at the
    config's test geometry: on one seeded random clip, or for an input-dependent model the mean over the first
    ``flop_clips`` readable test clips (the central crop of one view), where count_flops takes real inputs."""
    from video_st.engine.build import eval_dataset, read_split
    from video_st.engine.testing import checkpoint_path, class_names_for, load_for_test
    from video_st.models.flops import count_params
    from video_st.profiling import gflops_of, inference_model, is_input_dependent, seeded_clip

    path = checkpoint_path(cfg, checkpoint)
    loaded, _ = load_for_test(cfg, path)
    model = loaded.model
    params = count_params(model)
    dynamic = is_input_dependent(model)
    keep_rates = list(getattr(model, "keep_rates", ()))
    infer = inference_model(model).eval()
    merged, model = infer is not model, infer
    shape = (1, 3, cfg.data.num_frames, cfg.data.size, cfg.data.size)
    out: dict[str, Any] = {"trainable_m": params["trainable"] / 1e6, "params_m": params["total"] / 1e6,
                           "input_dependent": dynamic, "keep_rates": keep_rates, "lora_merged_for_inference": merged}
    if dynamic and flop_clips > 0:
        records, _ = read_split(cfg, "test", class_names_for(cfg, loaded))
        dataset = eval_dataset(cfg, records)
        values = []
        for index in range(len(dataset)):
            item = dataset[index]
            if item["views"] is not None:
                values.append(gflops_of(model, item["views"][:1].float()))
            if len(values) == flop_clips:
                break
        if not values:
            raise RuntimeError(f"no readable clip in the test split {cfg.data.test or cfg.data.val} to count FLOPs on")
        out.update(gflops=sum(values) / len(values), gflops_min=min(values), gflops_max=max(values),
                   gflops_clips=len(values))
    else:
        out["gflops"] = gflops_of(model, seeded_clip(shape, seed=seed))
    return out


def plot_accuracy_vs_gflops(rows: list[dict[str, Any]], path: str, title: str) -> None:
    """Test top-1 against GFLOPs, one labelled point per method (diamonds: input-dependent); methods that land on
    the same spot share one label. PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r.get("test_top1_pct") is not None and r.get("gflops") is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    if points:
        xs, ys = [r["gflops"] for r in points], [r["test_top1_pct"] for r in points]
        x_tol, y_tol = 0.01 * (max(xs) - min(xs) or max(xs) or 1), 0.01 * (max(ys) - min(ys) or 1)
        groups: list[list[dict[str, Any]]] = []
        for row in points:
            for group in groups:
                if abs(group[0]["gflops"] - row["gflops"]) <= x_tol and \
                        abs(group[0]["test_top1_pct"] - row["test_top1_pct"]) <= y_tol:
                    group.append(row)
                    break
            else:
                groups.append([row])
        for group in groups:
            for row in group:
                dynamic = row.get("input_dependent")
                ax.scatter(row["gflops"], row["test_top1_pct"], marker="D" if dynamic else "o", s=46,
                           color="tab:orange" if dynamic else "tab:blue", zorder=3)
            ax.annotate(", ".join(r["method"] for r in group), (group[0]["gflops"], group[0]["test_top1_pct"]),
                        textcoords="offset points", xytext=(6, 5), fontsize=9)
        span = max(ys) - min(ys)
        ax.set_ylim(max(0.0, min(ys) - max(5.0, 0.2 * span)), min(105.0, max(ys) + max(2.0, 0.2 * span)))
    if any(r.get("input_dependent") for r in points):
        ax.scatter([], [], marker="D", color="tab:orange", label="input-dependent (mean over test clips)")
        ax.scatter([], [], marker="o", color="tab:blue", label="static")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("GFLOPs per view (fvcore convention; LoRA merged)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def train_methods_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py train-methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_cpu.yaml", help="training and test config of every method")
    parser.add_argument("--backbone", default="outputs/demo/backbone.pt", help="model.pretrained (make demo writes it)")
    parser.add_argument("--data", default="outputs/demo/k400", help="K400-style root with annotations/{train,val}.csv")
    parser.add_argument("--methods", help="comma-separated subset (default: all of video_st.list_methods())")
    parser.add_argument("--output-dir", default="outputs/methods", help="one run folder per method under it")
    parser.add_argument("--epochs", type=int, help="optim.epochs (default: the config's)")
    parser.add_argument("--lr-for", action="append", default=[], metavar="METHOD=LR[,METHOD=LR]",
                        help="optim.lr for some methods (default: the config's for all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another override for every run, e.g. data.num_workers=1")
    parser.add_argument("--test-checkpoint", choices=["final", "best"], default="final",
                        help="final: model_final.pt (default: the test split is the validation split here, so the "
                             "best-on-validation checkpoint would be chosen on the test set); best: checkpoints/best")
    parser.add_argument("--flop-clips", type=int, default=8, help="test clips the GFLOPs of input-dependent models average")
    parser.add_argument("--seed", type=int, default=0, help="of the random clip the GFLOPs of static models use")
    parser.add_argument("--timeout", type=float, help="seconds per training or test run")
    parser.add_argument("--skip-done", action="store_true",
                        help="reuse a method's finished run (its test summary and recorded settings match)")
    parser.add_argument("--plot", default="docs/methods_accuracy_vs_gflops.png", help="PNG of test top-1 vs GFLOPs")
    parser.add_argument("--out", help="JSON of the rows (default: OUTPUT_DIR/methods.json; the table beside it, .md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    methods = _split_methods(parser, args.methods)
    lr_for = _parse_lr_for(parser, args.lr_for)
    out_json = args.out or os.path.join(args.output_dir, "methods.json")

    from video_st.config import load_config

    base = load_config(args.config, args.set)
    data = os.path.abspath(args.data)
    common = [f"model.pretrained={os.path.abspath(args.backbone)}", f"data.root={data}",
              f"data.train={os.path.join(data, 'annotations', 'train.csv')}",
              f"data.val={os.path.join(data, 'annotations', 'val.csv')}", "log.progress=false", *args.set]
    if args.epochs is not None:
        common.append(f"optim.epochs={args.epochs}")
    for path in (args.backbone, os.path.join(data, "annotations", "train.csv")):
        if not os.path.exists(path):
            parser.error(f"{path} does not exist: run `make demo` first (or pass --backbone / --data)")

    rows = []
    for method in methods:
        folder = os.path.abspath(os.path.join(args.output_dir, method))
        lr = lr_for.get(method, float(base.optim.lr))
        overrides = [*common, f"output_dir={folder}", f"model.method={method}", f"optim.lr={lr}"]
        settings = {"overrides": overrides, "config": args.config, "test_checkpoint": args.test_checkpoint}
        row: dict[str, Any] = {"method": method, "lr": lr, "epochs": args.epochs or int(base.optim.epochs)}
        checkpoint = os.path.join(folder, "model_final.pt") if args.test_checkpoint == "final" else None
        test_dir = os.path.join(folder, "test")
        done = args.skip_done and _read_json(os.path.join(folder, "benchmark_settings.json")) == settings \
            and os.path.exists(os.path.join(test_dir, "summary.json"))
        if not done:
            _prepare_run_dir(folder)
            print(f"[{method}] training (lr {lr}) -> {folder}", flush=True)
            code, row["train_s"] = _run_logged(
                [sys.executable, "tools/train_net.py", "--config", args.config, *overrides, "checkpoint.resume=none"],
                os.path.join(folder, "train.log"), args.timeout)
            if code != 0:
                row["error"] = f"training exited {code} (log: {folder}/train.log): {_tail(os.path.join(folder, 'train.log'))}"
            else:
                test_cmd = [sys.executable, "tools/test_net.py", "--config", args.config, *overrides,
                            "--output", test_dir] + (["--checkpoint", checkpoint] if checkpoint else [])
                code, row["test_s"] = _run_logged(test_cmd, os.path.join(folder, "test.log"), args.timeout)
                if code != 0:
                    row["error"] = f"test exited {code} (log: {folder}/test.log): {_tail(os.path.join(folder, 'test.log'))}"
                else:
                    write_atomic(os.path.join(folder, "benchmark_settings.json"), json.dumps(settings, indent=1))
        else:
            previous = _read_json(os.path.join(folder, "benchmark_row.json")) or {}
            row.update({k: previous[k] for k in ("train_s", "test_s") if k in previous})
        if "error" not in row:
            summary = _read_json(os.path.join(test_dir, "summary.json")) or {}
            row.update({"test_top1": summary.get("top1"), "test_top5": summary.get("top5"),
                        "mean_class_acc": summary.get("mean_class_accuracy"), "test_videos": summary.get("videos"),
                        "test_views": summary.get("views_per_video"), "gflops_engine": summary.get("gflops_per_view"),
                        "checkpoint": summary.get("checkpoint")})
            standard = {"checkpoint", "checkpoint_kind", "videos", "excluded", "partial", "views_per_video",
                        "temporal_views", "spatial_views", "ensemble", "top1", "top5", "mean_class_accuracy",
                        "gflops_per_view", "gflops_per_video", "clips_per_s", "world_size", "test_file"}
            extra = {k: v for k, v in summary.items() if k not in standard}
            if extra:  # e.g. the token statistics of dynamic models
                row["test_extra"] = extra
            row.update(_run_log_summary(folder))
            classes = _read_json(os.path.join(folder, "classes.json"))
            row["num_classes"] = len(classes) if isinstance(classes, list) else None
            try:
                cfg = load_config(args.config, overrides)
                row.update(trained_model_gflops(cfg, checkpoint, args.flop_clips, args.seed))
            except Exception as err:  # a row without GFLOPs is still worth its accuracy
                row["error"] = f"GFLOPs: {type(err).__name__}: {err}"
            write_atomic(os.path.join(folder, "benchmark_row.json"), json.dumps(row, indent=1, default=str))
        for key in ("test_top1", "test_top5", "mean_class_acc", "best_val_top1"):
            if isinstance(row.get(key), (int, float)) and not math.isnan(row[key]):
                row[f"{key}_pct"] = 100 * row[key]
        chance = 1 / row["num_classes"] if row.get("num_classes") else None
        notes = [n for n in [_notes(row)] if n]
        if row.get("keep_rates"):
            notes.append("keep rates " + ", ".join(f"{k:g}" for k in row["keep_rates"]))
        if chance and row.get("test_top1") is not None and row["test_top1"] <= 1.5 * chance:
            notes.append("did not learn (top-1 near chance): try --lr-for")
        row["notes"] = "; ".join(notes)
        rows.append(row)
        print(f"[{method}] " + (f"error: {row['error']}" if row.get("error") else
                                f"test top-1 {row.get('test_top1_pct', float('nan')):.1f}%, {row.get('gflops', 0):.4f} GFLOPs"),
              flush=True)

    add_ratios(rows, reference="full", keys=["gflops", "trainable_m"], suffix="full")
    geometry = f"{base.model.arch}, {base.data.num_frames} x {base.data.size}"
    table = markdown_table(rows, [c for c in TRAIN_COLUMNS if c in ("method", "notes") or any(c in r for r in rows)])
    header = (f"{geometry}, {args.config} + model.method=M, backbone {args.backbone}, data {args.data}; test: "
              f"{args.test_checkpoint} model, {base.test.temporal_views} x {base.test.spatial_views} views")
    print(header)
    print(table)
    write_atomic(out_json, json.dumps({"args": vars(args), "machine": machine_info("cpu"), "rows": rows}, indent=2,
                                      default=str) + "\n")
    write_atomic(os.path.splitext(out_json)[0] + ".md", header + "\n\n" + table + "\n")
    if args.plot:
        epochs = args.epochs or int(base.optim.epochs)
        plot_accuracy_vs_gflops(rows, args.plot, f"{geometry}: {epochs} epoch{'s' * (epochs != 1)} on {args.data}, "
                                                 f"test ({args.test_checkpoint} model, "
                                                 f"{base.test.temporal_views} x {base.test.spatial_views} views)")
        print(f"plot: {args.plot}")
    failed = [r["method"] for r in rows if r.get("error")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def data_main(argv: list[str]) -> int:
    import tempfile

    from video_st.data.datasets import ClipSpec, read_k400_csv
    from video_st.data.throughput import measure
    from video_st.data.transforms import BatchAugment, TrainTransform

    parser = argparse.ArgumentParser(prog="benchmark.py data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", help="K400-style CSV (default: generate a synthetic set in a temporary folder)")
    parser.add_argument("--root", help="video root for --csv")
    parser.add_argument("--videos", type=int, default=16, help="how many videos to time")
    parser.add_argument("--video-frames", type=int, default=300, help="synthetic videos: length (300: 10 s at 30 fps)")
    parser.add_argument("--height", type=int, default=240, help="synthetic videos: frame height")
    parser.add_argument("--width", type=int, default=320, help="synthetic videos: frame width")
    parser.add_argument("--grain", type=float, default=5.0,
                        help="synthetic videos: film-grain std; 5 gives 0.3-1 Mbit/s, the bitrate of 320p Kinetics "
                             "(0: flat scenes at ~0.15 Mbit/s, unrealistically cheap to decode)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="crop size of the training transform")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)  # one loader worker's view of the machine

    with tempfile.TemporaryDirectory() as tmp:
        if args.csv:
            records, _ = read_k400_csv(args.csv, args.root or os.path.dirname(args.csv))
        else:
            from video_st.data.synthetic import make_k400_style

            # 300 frames = 10 s at 30 fps, the length of a Kinetics clip.
            summary = make_k400_style(tmp, num_classes=4, train_per_class=max(1, args.videos // 4), val_per_class=1,
                                      num_frames=args.video_frames, height=args.height, width=args.width, fps=30, seed=0,
                                      grain=args.grain)
            records, _ = read_k400_csv(summary.annotation_files["train"], tmp)
        records = records[: args.videos]
        clip = ClipSpec(sampling="dense", num_frames=args.frames, stride=args.stride)
        pipelines = {"crop + flip (uint8 out: augment_on=device, the default)":
                         TrainTransform(size=args.size, rand_augment=None, output="uint8"),
                     "crop + flip + normalise": TrainTransform(size=args.size, rand_augment=None),
                     "crop + flip + RandAugment (2, 9) + normalise (augment_on=worker)":
                         TrainTransform(size=args.size, rand_augment=(2, 9))}
        result = measure(records, clip=clip, transforms=pipelines, size=args.size, rounds=args.rounds)
    source = args.csv or f"synthetic K400-style, {args.video_frames} frames at {args.height} x {args.width}, grain {args.grain}"
    print(f"{result.videos} videos ({source}) x {args.rounds} rounds, training clip {args.frames} x stride "
          f"{args.stride}, crop {args.size}, 1 thread (one loader worker)")
    print("| measure | value |\n|---|---|")
    print(f"| raw decord read, clips/s | {result.raw_clips_s:.2f} |")
    for name, clips_s in result.pipeline_clips_s.items():
        print(f"| decode + {name}, clips/s (overhead over raw) | {clips_s:.2f} ({100 * result.overhead(name):.1f}%) |")
    for name, cost in result.views_cost.items():
        print(f"| test views {name}: all views / one clip | {cost:.2f}x |")
    # What augment_on=device moves into the training process, timed here on the CPU (on a GPU it is far cheaper).
    batch = torch.randint(0, 256, (8, 3, args.frames, args.size, args.size), dtype=torch.uint8)
    augment, start = BatchAugment(rand_augment=(2, 9)), time.perf_counter()
    for _ in range(args.rounds):
        augment(batch)
    per_clip = (time.perf_counter() - start) / (args.rounds * len(batch))
    print(f"| BatchAugment (RandAugment 2, 9 + normalise) on this CPU, ms per clip | {1000 * per_clip:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
