"""tools/benchmark.py train-methods: a short training and the multi-view test of every method on one dataset.

Each method runs the project's own tools in a subprocess from the repository root (tools/train_net.py with
--config and model.method=M, then tools/test_net.py on its final model, or its best with test_checkpoint="best"),
one run folder per method with the tools' output in train.log / test.log; ``jobs`` runs at once, each with its
share of the cores (bench/jobs.py). As each run ends, its results are read here from what it wrote
(test/summary.json, log.jsonl, classes.json); the GFLOPs are counted on the trained model as the test
loads it (input-dependent models: the mean over real test clips). Where the data has ground-truth object masks
(the hard generated style), each reducing method's kept tokens are scored against them per stage
(``foreground``). Then a JSON of rows, a markdown table beside it and a plot of test top-1 vs GFLOPs (``plots``).
The hard suite (``hard_suite``) runs sweeps of this module over seeds, keep rates and variants in one pool
(``run_sweeps``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import load_config, to_dict
from ..data.masks import masks_beside
from ..engine import multiview as tester  # the test tool's loading: the one name to change if the module moves
from ..engine.build import eval_dataset, read_split, split_file
from ..fileio import sha256_file, write_atomic
from ..models.flops import count_params
from .foreground import foreground_scores
from .jobs import Outcome, Step, child_env, log_tail, run_chains, threads_per_job
from .measure import gflops_of, inference_model, is_input_dependent, machine_info, seeded_clip
from .plots import plot_accuracy_vs_gflops
from .tables import add_ratios, markdown_table, notes

_log = logging.getLogger(__name__)  # one line per run as it starts and ends (tools/benchmark.py shows INFO)

COLUMNS = ["method", "lr", "epochs", "trainable_m", "gflops", "gflops/full", "test_top1_pct", "test_top5_pct",
           "mean_class_acc_pct", "best_val_top1_pct", "fg1_recall", "fg1_random_recall", "fg1_precision",
           "fg1_random_precision", "train_s", "notes"]
# test/summary.json (engine.multiview.run_test) key -> row key; its other keys below are bookkeeping, and what is
# neither (the token statistics of dynamic models) goes to the row's test_extra
FROM_SUMMARY = {"top1": "test_top1", "top5": "test_top5", "mean_class_accuracy": "mean_class_acc", "videos": "test_videos",
                "views_per_video": "test_views", "gflops_per_view": "gflops_engine", "checkpoint": "checkpoint"}
SUMMARY_BOOKKEEPING = {"checkpoint_kind", "excluded", "partial", "temporal_views", "spatial_views", "ensemble",
                       "gflops_per_video", "clips_per_s", "world_size", "test_file", "method", "test_time_changes",
                       "results"}


@dataclass(frozen=True)
class Sweep:
    methods: Sequence[str]
    config: str = "configs/tiny_cpu.yaml"  # training and test config of every method
    backbone: str = "outputs/demo/backbone.pt"  # model.pretrained
    data: str = "outputs/demo/k400"  # K400-style root with annotations/{train,val}.csv
    output_dir: str = "outputs/methods"  # one run folder per method under it
    epochs: int | None = None  # optim.epochs (None: the config's)
    lr_for: Mapping[str, float] = field(default_factory=dict)  # optim.lr per method (else the config's)
    overrides: Sequence[str] = ()  # key=value for every run
    test_checkpoint: str = "final"  # final: model_final.pt; best: the run's checkpoints/best
    flop_clips: int = 8  # test clips the GFLOPs of input-dependent models average
    seed: int = 0  # of the random clip the GFLOPs of static models use
    timeout: float | None = None  # seconds per training or test run
    skip_done: bool = False  # reuse a method's finished run (test summary there, recorded settings equal)
    plot: str | None = None  # PNG of test top-1 vs GFLOPs
    out: str | None = None  # JSON of the rows (None: OUTPUT_DIR/methods.json); the table beside it, .md
    foreground: bool = True  # score kept tokens against the test split's masks file, where there is one
    jobs: int = 1  # runs at once (run_methods), each with its share of the cores (bench/jobs.py)


def run_methods(sweep: Sweep) -> list[dict[str, Any]]:
    """Train and test every method of ``sweep``, ``sweep.jobs`` at once (one line each as it finishes); the rows,
    with ratios to full."""
    return run_sweeps([sweep], jobs=sweep.jobs)[0]


def run_sweeps(sweeps: Sequence[Sweep], *, jobs: int = 1) -> list[list[dict[str, Any]]]:
    """Every method of every sweep, up to ``jobs`` runs at once (bench/jobs.py: each with its share of the
    cores); per sweep its rows in method order, with ratios to full. A finished run is reused (``skip_done``)
    only when it ran with the same thread count too."""
    threads = threads_per_job(jobs)
    digests: dict[tuple[str, str], dict[str, str | None]] = {}  # (backbone, data) -> input_digests, hashed once
    runs = []
    for sweep in sweeps:
        base = load_config(sweep.config, list(sweep.overrides))  # once per sweep: its lr and epochs defaults
        runs.append([_plan_run(sweep, method, base=base, threads=threads, digests=digests)
                     for method in sweep.methods])
    folders = [run.folder for sweep_runs in runs for run in sweep_runs]
    twice = sorted({f for f in folders if folders.count(f) > 1})
    if twice:  # two runs in one folder would train over each other's files
        raise ValueError(f"two runs in one folder {twice[0]}: give each method, seed, keep rate and variant once")
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    todo: dict[str, tuple[int, int]] = {}
    for i, sweep_runs in enumerate(runs):
        for j, run in enumerate(sweep_runs):
            if run.done:
                rows[i, j] = _finish_row(run, None)
            else:
                _prepare_run_dir(run.folder)
                todo[f"{i}:{run.method}"] = (i, j)

    def started(key: str) -> None:
        run = runs[todo[key][0]][todo[key][1]]
        _log.info("[%s] training (lr %s) -> %s", run.method, run.lr, run.folder)

    def finished(key: str, outcome: Outcome) -> None:
        rows[todo[key]] = _finish_row(runs[todo[key][0]][todo[key][1]], outcome)

    run_chains({key: runs[i][j].steps for key, (i, j) in todo.items()}, jobs=jobs, env=child_env(threads),
               on_start=started, on_done=finished)
    out = []
    for i, sweep_runs in enumerate(runs):
        sweep_rows = [rows[i, j] for j in range(len(sweep_runs))]
        add_ratios(sweep_rows, reference="full", keys=["gflops", "trainable_m"], suffix="full")
        out.append(sweep_rows)
    return out


def train_methods(sweep: Sweep, args: Mapping[str, Any] | None = None) -> tuple[str, list[str]]:
    """Train and test every method of ``sweep`` (one log line per method), write the JSON (with ``args``, the
    command line), the markdown and the plot; the report (header, table, plot path) and the methods that failed."""
    rows = run_methods(sweep)
    base = load_config(sweep.config, list(sweep.overrides))
    epochs = sweep.epochs or int(base.optim.epochs)
    geometry = f"{base.model.arch}, {base.data.num_frames} x {base.data.size}"
    views = f"{base.test.temporal_views} x {base.test.spatial_views} views"
    table = markdown_table(rows, [c for c in COLUMNS if c in ("method", "notes") or any(c in r for r in rows)])
    header = (f"{geometry}, {sweep.config} + model.method=M, backbone {sweep.backbone}, data {sweep.data}; test: "
              f"{sweep.test_checkpoint} model, {views}")
    report = [header, table]
    out_json = sweep.out or os.path.join(sweep.output_dir, "methods.json")
    write_atomic(out_json, json.dumps({"args": dict(args or {}), "machine": machine_info("cpu"), "rows": rows},
                                      indent=2, default=str) + "\n")
    write_atomic(os.path.splitext(out_json)[0] + ".md", header + "\n\n" + table + "\n")
    if sweep.plot:
        plot_accuracy_vs_gflops(rows, sweep.plot, f"{geometry}: {epochs} epoch{'s' * (epochs != 1)} on {sweep.data}, "
                                                  f"test ({sweep.test_checkpoint} model, {views})")
        report.append(f"plot: {sweep.plot}")
    return "\n".join(report), [r["method"] for r in rows if r.get("error")]


def input_digests(backbone: str, data: str) -> dict[str, str | None]:
    """SHA-256 of what a run reads besides its config: the backbone file and the annotation files. The paths
    alone would let ``skip_done`` reuse a run whose backbone was retrained or whose data was regenerated in place
    (the hard suite does both when its settings change); None for a missing file (the run then fails itself)."""
    annotations = os.path.join(os.path.abspath(data), "annotations")
    files = {"backbone": os.path.abspath(backbone),
             **{split: os.path.join(annotations, f"{split}.csv") for split in ("train", "val")}}
    return {name: sha256_file(path) if os.path.isfile(path) else None for name, path in files.items()}


@dataclass(frozen=True)
class _Run:
    """One method of one sweep: where it runs, what it is (``settings``, the reuse stamp), its steps."""
    sweep: Sweep
    method: str
    lr: float
    epochs: int
    folder: str
    overrides: list[str]
    settings: dict[str, Any]
    checkpoint: str | None
    done: bool  # a finished run with these settings is there (skip_done)
    steps: list[Step]


def _plan_run(sweep: Sweep, method: str, *, base: Any, threads: int, digests: dict[tuple[str, str], Any]) -> _Run:
    data = os.path.abspath(sweep.data)
    lr = sweep.lr_for.get(method, float(base.optim.lr))
    if (sweep.backbone, data) not in digests:
        digests[sweep.backbone, data] = input_digests(sweep.backbone, data)
    folder = os.path.abspath(os.path.join(sweep.output_dir, method))
    overrides = [f"model.pretrained={os.path.abspath(sweep.backbone)}", f"data.root={data}",
                 f"data.train={os.path.join(data, 'annotations', 'train.csv')}",
                 f"data.val={os.path.join(data, 'annotations', 'val.csv')}", "log.progress=false", *sweep.overrides,
                 *([f"optim.epochs={sweep.epochs}"] if sweep.epochs is not None else []),
                 f"output_dir={folder}", f"model.method={method}", f"optim.lr={lr}"]
    # the config as the run will read it, its base files and defaults included: an edited config file (or a
    # base one) is another run under the same name
    settings = {"overrides": overrides, "config": sweep.config,
                "resolved": to_dict(load_config(sweep.config, overrides)), "test_checkpoint": sweep.test_checkpoint,
                "inputs": digests[sweep.backbone, data], "threads": threads}
    checkpoint = os.path.join(folder, "model_final.pt") if sweep.test_checkpoint == "final" else None
    test_dir = os.path.join(folder, "test")
    done = sweep.skip_done and read_json(os.path.join(folder, "benchmark_settings.json")) == settings \
        and os.path.exists(os.path.join(test_dir, "summary.json"))
    config = ["--config", sweep.config, *overrides]
    commands = {"train": ["tools/train_net.py", *config, "checkpoint.resume=none"],
                "test": ["tools/test_net.py", *config, "--output", test_dir]
                + (["--checkpoint", checkpoint] if checkpoint else [])}
    steps = [Step(name=name, cmd=[sys.executable, *cmd], log=os.path.join(folder, f"{name}.log"),
                  timeout=sweep.timeout) for name, cmd in commands.items()]
    return _Run(sweep=sweep, method=method, lr=lr, epochs=sweep.epochs or int(base.optim.epochs), folder=folder,
                overrides=overrides, settings=settings, checkpoint=checkpoint, done=done, steps=steps)


def _finish_row(run: _Run, outcome: Outcome | None) -> dict[str, Any]:
    """A method's row from what its run wrote (``outcome``: the run just ended; None: a finished run reused),
    with the GFLOPs and foreground scores of the trained model; one line logged."""
    folder, sweep = run.folder, run.sweep
    row: dict[str, Any] = {"method": run.method, "lr": run.lr, "epochs": run.epochs}
    if outcome is None:
        previous = read_json(os.path.join(folder, "benchmark_row.json")) or {}
        row.update({k: previous[k] for k in ("train_s", "test_s") if k in previous})
    else:
        row.update({f"{name}_s": seconds for name, seconds in outcome.seconds.items()})
        if outcome.code != 0:
            what = {"train": "training"}.get(outcome.failed or "", outcome.failed)
            log = os.path.join(folder, f"{outcome.failed}.log")
            row["error"] = f"{what} exited {outcome.code} (log: {log}): {log_tail(log)}"
        else:
            write_atomic(os.path.join(folder, "benchmark_settings.json"), json.dumps(run.settings, indent=1))
    if "error" not in row:
        row.update(summary_fields(read_json(os.path.join(folder, "test", "summary.json")) or {}))
        row.update(run_log_summary(folder))
        classes = read_json(os.path.join(folder, "classes.json"))
        row["num_classes"] = len(classes) if isinstance(classes, list) else None
        try:
            cfg = load_config(sweep.config, run.overrides)
            row.update(trained_model_measures(cfg, run.checkpoint, sweep.flop_clips, sweep.seed,
                                              foreground=sweep.foreground))
        except Exception as err:  # a row without GFLOPs is still worth its accuracy
            row["error"] = f"GFLOPs or foreground: {type(err).__name__}: {err}"
        write_atomic(os.path.join(folder, "benchmark_row.json"), json.dumps(row, indent=1, default=str))
    for key in ("test_top1", "test_top5", "mean_class_acc", "best_val_top1"):
        if isinstance(row.get(key), (int, float)) and not math.isnan(row[key]):
            row[f"{key}_pct"] = 100 * row[key]
    chance = 1 / row["num_classes"] if row.get("num_classes") else None
    cells = [n for n in [notes(row)] if n]
    if row.get("keep_rates"):
        cells.append("keep rates " + ", ".join(f"{k:g}" for k in row["keep_rates"]))
    if chance and row.get("test_top1") is not None and row["test_top1"] <= 1.5 * chance:
        cells.append("did not learn (top-1 near chance): try --lr-for")
    row["notes"] = "; ".join(cells)
    if row.get("error"):
        _log.warning("[%s] error: %s", run.method, row["error"])
    else:  # the folder names the run among the suite's sweeps (seed1/..., keep0.4/..., variants/...)
        _log.info("[%s] test top-1 %.1f%%, %.4f GFLOPs (%s)", run.method, row.get("test_top1_pct", float("nan")),
                  row.get("gflops", 0), os.path.join(os.path.basename(sweep.output_dir), run.method))
    return row


def summary_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The row's part of a test summary.json: FROM_SUMMARY renamed, and ``test_extra`` for what the summary has
    beyond its fixed keys (e.g. the token statistics of dynamic models)."""
    out: dict[str, Any] = {row_key: summary.get(key) for key, row_key in FROM_SUMMARY.items()}
    extra = {k: v for k, v in summary.items() if k not in FROM_SUMMARY and k not in SUMMARY_BOOKKEEPING}
    if extra:
        out["test_extra"] = extra
    return out


def run_log_summary(output_dir: str) -> dict[str, Any]:
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


def trained_model_measures(cfg: Any, checkpoint: str | None, flop_clips: int, seed: int, *,
                           foreground: bool = True) -> dict[str, Any]:
    """Load the trained model as tools/test_net.py does and count its inference GFLOPs (LoRA merged) at the
    config's test geometry: on one seeded random clip, or for an input-dependent model the mean over the first
    ``flop_clips`` readable test clips (the central crop of one view), where count_flops takes real inputs.
    With ``foreground`` and a masks file beside the test split's annotations, a reducing model's kept tokens
    are scored against it on the test protocol's views (``foreground_fields``)."""
    loaded, _ = tester.load_for_test(cfg, tester.checkpoint_path(cfg, checkpoint))
    model = loaded.model
    scores = foreground_fields(model, cfg) if foreground else {}
    params = count_params(model)
    dynamic = is_input_dependent(model)
    keep_rates = list(getattr(model, "keep_rates", ()))
    infer = inference_model(model).eval()
    merged, model = infer is not model, infer
    shape = (1, 3, cfg.data.num_frames, cfg.data.size, cfg.data.size)
    out: dict[str, Any] = {"trainable_m": params["trainable"] / 1e6, "params_m": params["total"] / 1e6,
                           "input_dependent": dynamic, "keep_rates": keep_rates, "lora_merged_for_inference": merged}
    if dynamic and flop_clips > 0:
        records, _ = read_split(cfg, "test", tester.class_names_for(cfg, loaded))
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
    return {**out, **scores}


def foreground_fields(model: Any, cfg: Any) -> dict[str, Any]:
    """``foreground``: per reduction stage, recall and precision of the kept tokens against the test split's
    ground-truth masks and those of a random choice at the same keep counts (bench/foreground.py), over the
    test protocol's views; nothing when there is no masks file or the model keeps every token."""
    masks = masks_beside(split_file(cfg, "test"))
    if not os.path.isfile(masks) or not model.stage_names():
        return {}
    result = foreground_scores(model, cfg, split="test", masks_file=masks,
                               temporal_views=int(cfg.test.temporal_views), spatial_views=int(cfg.test.spatial_views))
    out: dict[str, Any] = {"foreground": [s.to_json() for s in result.stages], "foreground_clips": result.clips}
    for i, stage in enumerate(result.stages, start=1):  # flat, for the tables: fg1_recall ... of the first stage
        out.update({f"fg{i}_recall": stage.recall, f"fg{i}_random_recall": stage.random_recall,
                    f"fg{i}_precision": stage.precision, f"fg{i}_random_precision": stage.random_precision})
    return out


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _prepare_run_dir(folder: str) -> None:
    """A method's output folder starts empty (log.jsonl appends); only a folder a run wrote is removed."""
    if os.path.isdir(folder) and os.listdir(folder):
        if not any(os.path.exists(os.path.join(folder, f)) for f in ("config.yaml", "log.jsonl", "train.log")):
            raise SystemExit(f"error: {folder} exists and is not a run folder of this tool; choose another --output-dir")
        shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)
