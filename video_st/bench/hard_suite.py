"""tools/benchmark.py train-methods --suite hard: every method on the hard generated task, accuracy against cost,
and where each reducing method's tokens go.

The steps, each reused on a rerun when its recorded settings are unchanged (a killed suite resumes where it was):

1. data: the hard style's pretrain set (seed 1) and target set (seed 2), ``OUTPUT/{pretrain,target}_data``;
2. stage 1: the 4-layer test model trained from scratch on the pretrain task (configs/hard/pretrain.yaml), then
   converted to a head-less backbone (tools/convert_checkpoint.py): ``OUTPUT/backbone.pt``;
3. stage 2: every method adapts that backbone to the target task with one budget (configs/hard/target.yaml),
   once per seed (``stage2`` through ``sweeps.run_sweeps``: the project's own train and test tools, multi-view
   test, GFLOPs of the trained model, per-stage foreground recall and precision of the kept tokens against the
   masks);
4. the keep-rate sweep: the keep-rate methods (Sparse-Tuning, EViT, ToMe) at other keep rates, first seed;
5. CPU clips/s of every trained model (first seed), interleaved on real test clips in one process;
6. why Sparse-Tuning stands where it does (bench/hard_diagnosis.py): the frozen backbone's own selection per layer
   and scoring query (no training), and, with ``variants``, a method retrained with one change each (first
   seed);
7. the selection oracle (bench/hard_oracle.py): every seed's trained Sparse-Tuning, EViT and Dense Adapters (and
   their variants) tested again with their tokens chosen by their own scoring, by the masks, at random, or all
   kept (no training).

The training runs of 3, 4 and 6 share one pool (``stage2``): ``jobs`` of them at once, each with its share of
the cores (bench/jobs.py); stage 1 runs alone, with all of them.

Then ``OUTPUT/suite.json`` (every row, the aggregate, the command line, the machine), ``OUTPUT/suite.md`` (the
tables and the verdicts on the targets of issue 18) and two plots: accuracy vs GFLOPs with the keep-rate curves,
and foreground recall per stage against the random choice.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..config import load_config, to_dict
from ..engine import multiview as tester
from ..engine.build import build_model, eval_dataset, read_split, set_mask_objectives
from ..fileio import sha256_file, write_atomic
from ..models.methods import list_methods
from ..synthetic.datasets import make_hard_style
from .hard_diagnosis import VARIANTS, probe_selection, render_diagnosis, variant_sweeps
from .hard_oracle import (ORACLE_METHODS, RANDOM_DRAWS, SELECTIONS, aggregate_oracle, oracle_scores, own_reduction,
                          render_oracle)
from .hard_report import render
from .hard_results import KEEP_RATE_METHODS, aggregate, check_targets, keep_curves
from .measure import inference_model, inference_step, interleaved_timings, machine_info
from .plots import plot_foreground, plot_suite
from .jobs import log_tail, run_logged
from .sweeps import Sweep, read_json, run_log_summary, run_sweeps

_log = logging.getLogger(__name__)  # the steps as they start (tools/benchmark.py shows INFO)

PRETRAIN_CONFIG = "configs/hard/pretrain.yaml"
TARGET_CONFIG = "configs/hard/target.yaml"
DATA_SEEDS = {"pretrain": 1, "target": 2}


@dataclass(frozen=True)
class HardSuite:
    output_dir: str = "outputs/hard"
    methods: Sequence[str] = ()  # empty: every method of list_methods()
    seeds: Sequence[int] = (0,)  # training seeds of stage 2 (the config's `seed`); the spread needs >= 2
    keep_rates: Sequence[float] = ()  # the sweep's other keep rates, e.g. (0.3, 0.5, 0.9, 1.0); () none
    num_classes: int = 8
    train_per_class: int = 128
    val_per_class: int = 16  # the test split (the target set's val split)
    pretrain_epochs: int | None = None  # None: configs/hard/pretrain.yaml's
    epochs: int | None = None  # stage 2, every method; None: configs/hard/target.yaml's
    lr_for: Mapping[str, float] = field(default_factory=dict)
    overrides: Sequence[str] = ()  # key=value for every run (stage 1 too), e.g. data.batch_size=4
    # key=value for stage 1 only, e.g. optim.attention_guide=0 (a backbone trained without the guide)
    pretrain_overrides: Sequence[str] = ()
    speed_rounds: int = 5  # interleaved timed rounds of the clips/s column (0: no column)
    timeout: float | None = None  # seconds per training or test run
    plot_dir: str | None = "docs"  # hard_accuracy_vs_gflops.png, hard_foreground.png (None: OUTPUT_DIR)
    variants: Sequence[str] = ()  # a method retrained with each (names of hard_diagnosis.VARIANTS); () none
    variant_seeds: Sequence[int] = ()  # of `seeds`, the variants run on; () the first seed
    probe: bool = True  # the frozen backbone's selection per layer and scoring query
    oracle: bool = True  # the trained top-k models tested again with their tokens chosen 4 ways (hard_oracle)
    jobs: int = 1  # stage-2 runs at once, each with its share of the cores (bench/jobs.py); stage 1 runs alone

    def all_methods(self) -> list[str]:
        return list(self.methods) or list_methods()


def run_suite(suite: HardSuite, args: Mapping[str, Any] | None = None) -> tuple[str, list[str]]:
    """The whole suite (see the module docstring), its steps logged as they start; the report (the tables and
    the verdicts, also in OUTPUT_DIR/suite.md) and the runs that failed (["stage 1"] when it did: then nothing
    else ran)."""
    load_config(TARGET_CONFIG, list(suite.overrides))  # a bad --set key: one line now, not after stage 1
    pretrain_cfg = load_config(PRETRAIN_CONFIG, [*suite.overrides, *suite.pretrain_overrides])
    set_mask_objectives(pretrain_cfg, build_model(pretrain_cfg))  # e.g. guide layers past the model's depth
    os.makedirs(suite.output_dir, exist_ok=True)
    data = {task: prepare_data(suite, task) for task in ("pretrain", "target")}
    stage1 = pretrain_backbone(suite, data["pretrain"])
    if stage1.get("error"):
        _log.error("error: stage 1 failed: %s", stage1["error"])
        return "", ["stage 1"]
    backbone = stage1["backbone"]
    methods = suite.all_methods()
    variant_seeds = list(suite.variant_seeds) or [suite.seeds[0]]
    per_seed, keep_rows, variants_per_seed = stage2(suite, methods, backbone, data["target"], variant_seeds)
    first = per_seed[suite.seeds[0]]
    probe = selection_probe(suite, stage1, data["target"]) if suite.probe else []
    variants = _with_variants(aggregate(variants_per_seed, {}), variants_per_seed[variant_seeds[0]])
    oracle = selection_oracle(suite, per_seed, variants_per_seed, data["target"]) if suite.oracle else []
    # beside them, the suite's own rows of the methods they change, and Dense Adapters' for Sparse-Tuning's (the
    # paper's claim is the distance between the two)
    changed = {VARIANTS[name].method for name in suite.variants}
    changed |= {"dense_adapter"} if "sparse_tuning" in changed else set()
    beside = aggregate({s: [r for r in per_seed[s] if r["method"] in changed] for s in variant_seeds}, {})
    speed = cpu_speed(suite, first, data["target"]) if suite.speed_rounds > 0 else {}
    rows = aggregate(per_seed, speed)
    curves = keep_curves(first, keep_rows)
    verdicts = check_targets(rows, curves, oracle)

    out_dir = suite.plot_dir or suite.output_dir
    plots = {"accuracy": os.path.join(out_dir, "hard_accuracy_vs_gflops.png"),
             "foreground": os.path.join(out_dir, "hard_foreground.png")}
    cfg = load_config(TARGET_CONFIG)
    title = (f"hard task: {cfg.model.arch}, {cfg.data.num_frames} x {cfg.data.size}, seeds "
             f"{', '.join(map(str, suite.seeds))}")
    plot_suite(rows, curves, plots["accuracy"], title)
    plot_foreground(rows, plots["foreground"], title + ": kept foreground tokens per stage")
    diagnosis = render_diagnosis(probe, variants, beside, sparse_layers=_sparse_layers(first))
    diagnosis += render_oracle(oracle)
    report = render(suite, cfg, stage1, rows, curves, verdicts, plots, diagnosis)
    failed = [r["method"] for rs in [*per_seed.values(), keep_rows, *variants_per_seed.values()] for r in rs
              if r.get("error")]
    write_atomic(os.path.join(suite.output_dir, "suite.json"), json.dumps(
        {"args": dict(args or {}), "suite": asdict(suite), "machine": machine_info("cpu"), "stage1": stage1,
         "per_seed": {str(k): v for k, v in per_seed.items()}, "keep_rate_sweep": keep_rows, "rows": rows,
         "selection_probe": probe, "selection_oracle": oracle, "variants": variants,
         "variants_per_seed": {str(k): v for k, v in variants_per_seed.items()},
         "curves": curves, "verdicts": verdicts, "plots": plots, "failed": failed}, indent=1, default=str) + "\n")
    write_atomic(os.path.join(suite.output_dir, "suite.md"), report + "\n")
    return report, failed


def prepare_data(suite: HardSuite, task: str) -> str:
    """The task's generated set under OUTPUT_DIR (made once per settings); its root."""
    root = os.path.abspath(os.path.join(suite.output_dir, f"{task}_data"))
    settings = _data_settings(suite, task)
    stamp = os.path.join(suite.output_dir, f"{task}_data.json")
    if read_json(stamp) == settings and os.path.isfile(os.path.join(root, "classes.json")):
        return root
    _log.info("== data: the hard %s set -> %s", task, root)
    summary = make_hard_style(root, task=task, num_classes=suite.num_classes, train_per_class=suite.train_per_class,
                              val_per_class=suite.val_per_class, seed=DATA_SEEDS[task], overwrite=True)
    _log.info("%s", summary.describe())
    write_atomic(stamp, json.dumps(settings))
    return root


def _data_settings(suite: HardSuite, task: str) -> dict[str, Any]:
    # what the generated set is a function of; part of every later stamp, since a change regenerates it in place
    return {"task": task, "num_classes": suite.num_classes, "train_per_class": suite.train_per_class,
            "val_per_class": suite.val_per_class, "seed": DATA_SEEDS[task]}


def pretrain_backbone(suite: HardSuite, data: str) -> dict[str, Any]:
    """Stage 1 (reused when done with the same settings): train, convert; its summary with ``backbone``."""
    folder = os.path.abspath(os.path.join(suite.output_dir, "pretrain"))
    backbone = os.path.abspath(os.path.join(suite.output_dir, "backbone.pt"))
    cfg = load_config(PRETRAIN_CONFIG)
    overrides = [f"output_dir={folder}", f"data.root={data}", f"model.num_classes={suite.num_classes}",
                 "log.progress=false", "checkpoint.resume=none", *suite.overrides, *suite.pretrain_overrides]
    if suite.pretrain_epochs is not None:
        overrides.append(f"optim.epochs={suite.pretrain_epochs}")
    geometry = ["--arch", str(cfg.model.arch), "--frames", str(cfg.data.num_frames), "--img-size",
                str(cfg.data.size), "--num-classes", "0"]
    # Float reductions split by the intra-op thread count: the same config retrains to the same bytes only with
    # the same torch and threads (the training subprocess inherits this process's), so a backbone made with
    # another count is another backbone, as for the stage-2 runs (bench/sweeps.py).
    # the config as read (an edited configs/hard/pretrain.yaml is another stage 1 under the same name)
    settings = {"config": PRETRAIN_CONFIG, "resolved": to_dict(load_config(PRETRAIN_CONFIG, overrides)),
                "overrides": overrides, "convert": geometry,
                "data": _data_settings(suite, "pretrain"), "threads": torch.get_num_threads()}
    stamp = os.path.join(suite.output_dir, "backbone.json")
    out: dict[str, Any] = {"backbone": backbone, "run": folder, "settings": settings}
    if not (read_json(stamp) == settings and os.path.isfile(backbone)):
        _log.info("== stage 1: pretraining the backbone -> %s", folder)
        os.makedirs(folder, exist_ok=True)
        steps = [("train", [sys.executable, "tools/train_net.py", "--config", PRETRAIN_CONFIG, *overrides]),
                 ("convert", [sys.executable, "tools/convert_checkpoint.py", os.path.join(folder, "model_final.pt"),
                              backbone, *geometry])]
        for name, cmd in steps:
            log = os.path.join(folder, f"suite_{name}.log")
            code, out[f"{name}_s"] = run_logged(cmd, log, suite.timeout)
            if code != 0:
                out["error"] = f"{name} exited {code} (log: {log}): {log_tail(log)}"
                return out
        # torch's version and the thread count beside the backbone, for the report to name
        write_atomic(os.path.join(folder, "suite_machine.json"), json.dumps(machine_info("cpu")))
        write_atomic(stamp, json.dumps(settings))
    out["machine"] = read_json(os.path.join(folder, "suite_machine.json"))
    out.update(run_log_summary(folder))
    return out


def selection_probe(suite: HardSuite, stage1: Mapping[str, Any], data: str) -> list[dict[str, Any]]:
    """bench/hard_diagnosis.probe_selection on the stage-1 backbone (reused while the backbone's bytes and the
    settings are unchanged: OUTPUT_DIR/selection_probe.json)."""
    settings = {"stage1": stage1["settings"], "backbone": sha256_file(stage1["backbone"]), "data": data,
                "target": _data_settings(suite, "target"), "overrides": list(suite.overrides)}
    path = os.path.join(suite.output_dir, "selection_probe.json")
    done = read_json(path)
    if isinstance(done, dict) and done.get("settings") == settings:
        return done["rows"]
    _log.info("== selection probe: the frozen backbone's top-k choice per layer")
    rows = probe_selection(TARGET_CONFIG, backbone=stage1["backbone"], data=data,
                           overrides=[f"model.num_classes={suite.num_classes}", *suite.overrides])
    write_atomic(path, json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    return rows


def _variants_folder(suite: HardSuite, seed: int) -> str:
    # the first seed's keeps the name it had when the variants ran on it alone (one layout for every output)
    return "variants" if seed == suite.seeds[0] else f"variants_seed{seed}"


def _with_variants(rows: list[dict[str, Any]], named: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # aggregate() keys rows by position and keeps the method; the variant's name rides along from one seed's rows
    return [{**row, "variant": one["variant"]} for row, one in zip(rows, named, strict=True)]


def _sparse_layers(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    # the layers Sparse-Tuning reduces at, from its stage names ("layer 2", ...)
    st = next((r for r in rows if r["method"] == "sparse_tuning"), {})
    return [int(s["stage"].split()[-1]) for s in st.get("foreground") or [] if s["stage"].split()[-1].isdigit()]


def _sweep(suite: HardSuite, methods: Sequence[str], backbone: str, data: str, *, seed: int, folder: str,
           extra: Sequence[str] = ()) -> Sweep:
    return Sweep(methods=methods, config=TARGET_CONFIG, backbone=backbone, data=data,
                 output_dir=os.path.join(suite.output_dir, folder), epochs=suite.epochs, lr_for=suite.lr_for,
                 overrides=[f"engine.seed={seed}", f"model.num_classes={suite.num_classes}", *suite.overrides, *extra],
                 timeout=suite.timeout, skip_done=True, foreground=True)


def stage2(suite: HardSuite, methods: Sequence[str], backbone: str, data: str, variant_seeds: Sequence[int]
           ) -> tuple[dict[int, list[dict[str, Any]]], list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    """Every training run of stage 2 in one pool (``suite.jobs`` at once, bench/sweeps.run_sweeps): each method
    per seed, the keep-rate methods at each other keep rate (first seed), the variants per variant seed. The
    rows per seed, the sweep's rows (with ``keep_rate``), the variants' rows per seed (with ``variant``)."""
    sweeps: list[Sweep] = []
    labels: list[tuple[str, Any]] = []  # per sweep: ("seed", seed), ("keep", rate) or ("variant", (seed, name))
    for seed in suite.seeds:
        sweeps.append(_sweep(suite, methods, backbone, data, seed=seed, folder=f"seed{seed}"))
        labels.append(("seed", seed))
    keep_methods = [m for m in KEEP_RATE_METHODS if m in methods]
    for rate in suite.keep_rates if keep_methods else ():
        sweeps.append(_sweep(suite, keep_methods, backbone, data, seed=suite.seeds[0], folder=f"keep{rate:g}",
                             extra=[f"model.keep_rate={rate}"]))
        labels.append(("keep", rate))
    for seed in variant_seeds:
        base = _sweep(suite, methods, backbone, data, seed=seed, folder=_variants_folder(suite, seed))
        for name, sweep in variant_sweeps(base, suite.variants):
            sweeps.append(sweep)
            labels.append(("variant", (seed, name)))
    runs = sum(len(s.methods) for s in sweeps)
    _log.info("== stage 2: %d runs (%d methods x seeds %s, %d other keep rates, %d variant runs), %d at once",
              runs, len(methods), ", ".join(map(str, suite.seeds)), len(suite.keep_rates) if keep_methods else 0,
              sum(kind == "variant" for kind, _ in labels), suite.jobs)
    per_seed: dict[int, list[dict[str, Any]]] = {}
    keep_rows: list[dict[str, Any]] = []
    variants: dict[int, list[dict[str, Any]]] = {seed: [] for seed in variant_seeds}
    for (kind, label), rows in zip(labels, run_sweeps(sweeps, jobs=suite.jobs), strict=True):
        if kind == "seed":
            per_seed[label] = rows
        elif kind == "keep":
            keep_rows += [{**row, "keep_rate": label} for row in rows]
        else:
            variants[label[0]] += [{**row, "variant": label[1]} for row in rows]
    return per_seed, keep_rows, variants


def cpu_speed(suite: HardSuite, rows: Sequence[Mapping[str, Any]], data: str) -> dict[str, float]:
    """Test clips per second of each trained model (LoRA merged), side by side: one batch of real test clips
    (the centre view), every model timed in turn for ``speed_rounds`` rounds, the median; method -> clips/s."""
    models = {}
    cfg = None
    for row in rows:
        if row.get("error"):
            continue
        model, cfg = _trained(suite, row, data)
        models[row["method"]] = inference_model(model).eval()
    if not models:
        return {}
    records, _ = read_split(cfg, "test")
    dataset = eval_dataset(cfg, records, temporal_views=1, spatial_views=1)
    clips = [dataset[i]["views"][0] for i in range(min(16, len(dataset))) if dataset[i]["views"] is not None]
    batch = torch.stack(clips).float()
    steps = {name: inference_step(model, batch, None) for name, model in models.items()}
    timings = interleaved_timings(steps, rounds=suite.speed_rounds, device=torch.device("cpu"))
    return {name: len(clips) / t.median for name, t in timings.items()}


def _trained(suite: HardSuite, row: Mapping[str, Any], data: str) -> tuple[torch.nn.Module, Any]:
    """A suite run's trained model (its row's checkpoint), loaded as the test tool loads it, and the config it
    was tested with (a variant's: with the variant's overrides, which the model's spec holds)."""
    extra = VARIANTS[row["variant"]].overrides if row.get("variant") else ()
    cfg = load_config(TARGET_CONFIG, [f"data.root={data}", f"model.method={row['method']}",
                                      f"model.num_classes={suite.num_classes}",
                                      f"output_dir={os.path.dirname(row['checkpoint'])}", *suite.overrides, *extra])
    loaded, _ = tester.load_for_test(cfg, row["checkpoint"])
    return loaded.model, cfg


def selection_oracle(suite: HardSuite, per_seed: Mapping[int, Sequence[Mapping[str, Any]]],
                     variants_per_seed: Mapping[int, Sequence[Mapping[str, Any]]], data: str) -> list[dict[str, Any]]:
    """bench/hard_oracle on every seed's trained Sparse-Tuning, EViT and Dense Adapters and their variants (the
    runs that finished), each at its own layers and keep rate, a dense one at Sparse-Tuning's: its rows. Reused
    while the models' bytes and the settings are unchanged (OUTPUT_DIR/selection_oracle.json); nothing without
    a Sparse-Tuning run to place a dense model's step."""
    first = per_seed[suite.seeds[0]]
    st = next((r for r in first if r["method"] == "sparse_tuning" and not r.get("error")), None)
    if st is None:
        return []
    dense = {"layers": _sparse_layers(first), "keep_rate": list(st["keep_rates"])}
    runs = [(seed, row.get("variant") or row["method"], row)
            for table in (per_seed, variants_per_seed) for seed, rows in table.items() for row in rows
            if row["method"] in ORACLE_METHODS and not row.get("error")]
    settings = {"selections": list(SELECTIONS), "draws": RANDOM_DRAWS, "dense": dense,
                "models": {f"{seed}/{label}": sha256_file(row["checkpoint"]) for seed, label, row in runs},
                "target": _data_settings(suite, "target"), "overrides": list(suite.overrides)}
    path = os.path.join(suite.output_dir, "selection_oracle.json")
    done = read_json(path)
    if isinstance(done, dict) and done.get("settings") == settings:
        return done["rows"]
    _log.info("== selection oracle: %d trained models tested with their tokens chosen 4 ways", len(runs))
    scores: dict[int, dict[str, Any]] = {}
    for seed, label, row in runs:
        model, cfg = _trained(suite, row, data)
        where = own_reduction(model) or dense
        scores.setdefault(seed, {})[label] = {"method": row["method"], **where,
                                              "selections": oracle_scores(model, cfg, draws=RANDOM_DRAWS, **where)}
    rows = aggregate_oracle(scores)
    write_atomic(path, json.dumps({"settings": settings, "per_seed": scores, "rows": rows}, indent=1) + "\n")
    return rows
