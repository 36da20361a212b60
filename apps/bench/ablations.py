"""`adafocus bench ablations`: the paper's ablation tables (VII, IX, X) and V1 vs V2 vs Uni, in miniature.

Every row is a model trained on the synthetic focus task from the same base preset (default cpu-synthetic) with
the same seeds and data, then evaluated on the same test split. Rows that are the same model in two tables are
trained once. Writes ``DIR/ablations.md``, ``DIR/ablations.json`` and one PNG per table; trained runs live in
``DIR/runs/<row>/`` and finished rows in ``DIR/rows/<row>.json``, so an interrupted run resumes.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
from adafocus.apps.runs.synthetic import evaluate_focus, synthetic_splits
from adafocus.core.adafocus_v1 import V1Schedule, train_adafocus_v1
from adafocus.core.config import Preset, as_adafocus_v1, as_adafocus_v2, get_preset
from adafocus.core.exits import (
    assign_exits,
    exit_accuracy,
    exit_scores,
    expected_cost,
    random_exit_accuracy,
    solve_budget,
)
from adafocus.core.io import atomic_write_json, atomic_write_text
from adafocus.core.run import RunFolder, load_run
from adafocus.core.train import collect_logits, train
from adafocus.datasets.synthetic import collate
from torch.utils.data import DataLoader

Variant = Callable[[Preset], Preset]
TABLES = ("VII", "IX", "X", "versions")


def _model(**changes) -> Variant:
    def apply(p: Preset) -> Preset:
        return dataclasses.replace(p, model=dataclasses.replace(p.model, **changes))
    return apply


def _loss(**changes) -> Variant:
    def apply(p: Preset) -> Preset:
        return dataclasses.replace(p, loss=dataclasses.replace(p.loss, **changes))
    return apply


def _chain(*variants: Variant) -> Variant:
    def apply(p: Preset) -> Preset:
        for variant in variants:
            p = variant(p)
        return p
    return apply


def variants(base: Preset) -> dict[str, Variant]:
    """Row key -> transformation of the base preset. The base preset itself is the full Uni-AdaFocus."""
    other_reg = 0.0 if base.loss.size_regularizer else 1.0
    no_reuse = _model(feature_reuse=False)
    fixed_uniform = _chain(no_reuse, _model(patch_shape="fixed", frame_policy="uniform"))
    deformable_uniform = _chain(no_reuse, _model(frame_policy="uniform"))
    v2 = as_adafocus_v2
    return {
        # Table VII: end-to-end training techniques on AdaFocusV2, then Uni-AdaFocus's additions.
        "vii_naive": _chain(v2, _model(policy_stop_gradient=False),
                            _loss(glance_aux=0.0, local_aux=0.0, diversity=False)),
        "vii_aux": _chain(v2, _model(policy_stop_gradient=False), _loss(diversity=False)),
        "vii_aux_div": _chain(v2, _model(policy_stop_gradient=False)),
        "v2": v2,
        "vii_deep_features": _chain(_model(patch_shape="fixed", frame_policy="uniform"),
                                    _loss(temporal=0.0, size_regularizer=0.0)),
        "vii_deformable": _chain(_model(frame_policy="uniform"), _loss(temporal=0.0)),
        "uni": lambda p: p,
        # Table IX (no feature reuse): patch location, patch scale/shape, frame sampling.
        "ix_loc_random": _chain(fixed_uniform, _model(patch_policy="random")),
        "ix_loc_center": _chain(fixed_uniform, _model(patch_policy="center")),
        "ix_loc_gaussian": _chain(fixed_uniform, _model(patch_policy="gaussian")),
        "ix_loc_learned": fixed_uniform,
        "ix_shape_random": _chain(deformable_uniform, _model(patch_shape="random")),
        "ix_shape_downsample": _chain(deformable_uniform, _model(patch_shape="full_frame")),
        "ix_shape_other_reg": _chain(deformable_uniform, _loss(size_regularizer=other_reg)),
        "ix_shape_deformable": deformable_uniform,
        "ix_frames_random": _chain(no_reuse, _model(frame_policy="random")),
        "ix_frames_central": _chain(no_reuse, _model(frame_policy="central")),
        "ix_frames_gaussian": _chain(no_reuse, _model(frame_policy="gaussian")),
        "ix_frames_learned": no_reuse,
        # Table X: spatial / temporal dynamic on or off (sample-wise is decided at evaluation).
        "x_none": _model(patch_shape="full_frame", patch_size=base.model.frame_size, frame_policy="uniform"),
        "x_temporal": _model(patch_shape="full_frame", patch_size=base.model.frame_size),
        "x_spatial": _chain(_model(frame_policy="uniform"), _loss(temporal=0.0)),
        # V1 (three-stage PPO) at the same cost as V2 and Uni.
        "v1": as_adafocus_v1,
    }


def table_rows(base: Preset) -> dict[str, list[tuple[str, str]]]:
    """Table -> [(row label, variant key)] in the paper's order."""
    reg = base.loss.size_regularizer
    reg_rows = ([("deformable, learned (size regulariser 0, preset)", "ix_shape_deformable"),
                 ("deformable, learned, with size regulariser 1.0", "ix_shape_other_reg")] if not reg else
                [("deformable, learned, w/o size regulariser", "ix_shape_other_reg"),
                 (f"deformable, learned (size regulariser {reg})", "ix_shape_deformable")])
    return {
        "VII": [("naive end-to-end (V2, no aux / diversity / stop-gradient)", "vii_naive"),
                ("+ auxiliary supervision", "vii_aux"), ("+ diversity augmentation", "vii_aux_div"),
                ("+ stop-gradient (= AdaFocusV2)", "v2"), ("+ deep-feature policy training", "vii_deep_features"),
                ("+ deformable patches", "vii_deformable"), ("+ dynamic frame sampling (= Uni-AdaFocus)", "uni")],
        "IX": [("location: random", "ix_loc_random"), ("location: centre", "ix_loc_center"),
               ("location: gaussian", "ix_loc_gaussian"), ("location: learned (fixed size)", "ix_loc_learned"),
               ("scale/shape: random", "ix_shape_random"), ("scale/shape: down-sampled full frame", "ix_shape_downsample"),
               *reg_rows,
               ("frames: uniform", "ix_shape_deformable"), ("frames: random", "ix_frames_random"),
               ("frames: central clip", "ix_frames_central"), ("frames: gaussian", "ix_frames_gaussian"),
               ("frames: learned", "ix_frames_learned")],
        "X": [("spatial off, temporal off", "x_none"), ("spatial off, temporal on", "x_temporal"),
              ("spatial on, temporal off", "x_spatial"), ("spatial on, temporal on", "uni")],
        "versions": [("AdaFocusV1 (3 stages, PPO)", "v1"), ("AdaFocusV2", "v2"), ("Uni-AdaFocus", "uni")],
    }


def quick_preset(base: Preset) -> Preset:
    """A tiny setting for tests: a few dozen samples, one epoch."""
    data = dataclasses.replace(base.data, train_samples=32, val_samples=16, calibration_samples=16, test_samples=16)
    return dataclasses.replace(base, data=data, loss=dataclasses.replace(base.loss, mc_samples=4),
                               train=dataclasses.replace(base.train, epochs=1, batch_size=8))


def _train_row(key: str, preset: Preset, splits: dict, runs: Path, device: str, log) -> Path:
    if key == "v1":
        epochs = preset.train.epochs
        schedule = V1Schedule(warmup_epochs=epochs, ppo_epochs=max(1, epochs // 4), finetune_epochs=max(1, epochs // 4))
        return Path(train_adafocus_v1(preset, splits["train"], splits["val"], runs / key, schedule=schedule,
                                      device=device, collate_fn=collate, log=log)["checkpoint"])
    return Path(train(preset, splits["train"], splits["val"], runs / key, device=device, collate_fn=collate,
                      progress=False, log=log)["best_checkpoint"])


def _budget_curve(model, splits: dict, budgets: list[float]) -> list[dict]:
    """Adaptive exit (thresholds fitted on the calibration split) vs random exit with the same proportions."""
    cal_logits, _ = collect_logits(model, DataLoader(splits["calibration"], batch_size=100, collate_fn=collate), "cpu")
    logits, labels = collect_logits(model, DataLoader(splits["test"], batch_size=100, collate_fn=collate), "cpu")
    costs, points = model.exit_costs(), []
    for budget in budgets:
        if not costs[0] <= budget <= costs[-1]:
            points.append({"budget": budget, "adaptive": None, "random": None, "gmacs": None})
            continue
        policy = solve_budget(exit_scores(cal_logits, "entropy"), costs, budget, criterion="entropy")
        exits = assign_exits(exit_scores(logits, "entropy"), torch.tensor(policy.thresholds))
        torch.manual_seed(0)
        points.append({"budget": budget, "adaptive": exit_accuracy(logits, labels, exits),
                       "random": random_exit_accuracy(logits, labels, exits), "gmacs": expected_cost(exits, costs)})
    return points


def run_ablations(out_dir: Path, *, preset_name: str = "cpu-synthetic", quick: bool = False,
                  epochs: int | None = None, train_samples: int | None = None, tables: tuple[str, ...] = TABLES,
                  rows: tuple[str, ...] | None = None, device: str = "cpu", log=print) -> dict:
    """Train every row the chosen tables need (same seeds and data), evaluate, write the report.
    ``rows`` (variant keys, e.g. ``ix_loc_learned``) restricts the run to those rows of the chosen tables."""
    unknown = set(tables) - set(TABLES)
    if unknown:
        raise ValueError(f"unknown tables {sorted(unknown)}; choose from {TABLES}")
    base = get_preset(preset_name)
    if quick:
        base = quick_preset(base)
    if epochs is not None:
        base.train = dataclasses.replace(base.train, epochs=epochs)
    if train_samples is not None:
        base.data = dataclasses.replace(base.data, train_samples=train_samples)
    splits = synthetic_splits(base)
    rows_wanted = {name: table for name, table in table_rows(base).items() if name in tables}
    if rows is not None:
        known = {key for table in rows_wanted.values() for _, key in table}
        if not rows or set(rows) - known:
            raise ValueError(f"unknown rows {sorted(set(rows) - known) or '(none given)'}; "
                             f"choose from {sorted(known)}")
        rows_wanted = {name: [(label, key) for label, key in table if key in rows]
                       for name, table in rows_wanted.items()}
        rows_wanted = {name: table for name, table in rows_wanted.items() if table}
    keys = list(dict.fromkeys(key for table in rows_wanted.values() for _, key in table))
    all_variants = variants(base)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rows").mkdir(exist_ok=True)
    results: dict[str, dict] = {}
    for index, key in enumerate(keys, 1):
        row_file = out_dir / "rows" / f"{key}.json"
        preset = all_variants[key](base)
        if row_file.exists() and json.loads(row_file.read_text(encoding="utf-8"))["config"] == preset.to_dict():
            results[key] = json.loads(row_file.read_text(encoding="utf-8"))
            continue
        log(f"[{index}/{len(keys)}] {key}")
        torch.manual_seed(base.train.seed)
        checkpoint = _train_row(key, preset, splits, out_dir / "runs", device, lambda s: None)
        model = load_run(checkpoint, device="cpu").model
        metrics = evaluate_focus(model, splits["test"])
        results[key] = {"config": preset.to_dict(), "exit_costs": model.exit_costs(), **metrics}
        atomic_write_json(row_file, results[key])
        log(f"    accuracy {metrics['accuracy']:.3f}  GMACs {metrics['mean_gmacs']:.4f}")
    if len(rows_wanted.get("X", ())) == len(table_rows(base)["X"]):  # budget curves compare all four rows
        _add_budget_curves(results, rows_wanted["X"], splits, out_dir)
    report = {"preset": preset_name, "quick": quick, "epochs": base.train.epochs,
              "train_samples": base.data.train_samples, "test_samples": base.data.test_samples,
              "tables": {name: [{"row": label, "key": key, **{k: v for k, v in results[key].items() if k != "config"}}
                                for label, key in rows] for name, rows in rows_wanted.items()}}
    atomic_write_json(out_dir / "ablations.json", report)
    atomic_write_text(out_dir / "ablations.md", render_markdown(report))
    plot_tables(report, out_dir)
    return report


def _add_budget_curves(results: dict, rows: list[tuple[str, str]], splits: dict, out_dir: Path) -> None:
    """Common absolute budgets: between the glance-only cost and the cheapest model's full cost."""
    costs = [results[key]["exit_costs"] for _, key in rows]
    low, high = max(c[0] for c in costs), min(c[-1] for c in costs)
    budgets = [low + f * (high - low) for f in (0.25, 0.5, 0.75, 1.0)]
    for _, key in rows:
        model = load_run(RunFolder(out_dir / "runs" / key).best, device="cpu").model
        results[key]["budget_curve"] = _budget_curve(model, splits, budgets)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_markdown(report: dict) -> str:
    titles = {"VII": "Table VII: end-to-end training techniques (cumulative)",
              "IX": "Table IX: learned policy vs baselines (no feature reuse)",
              "X": "Table X: dynamic dimensions on/off at matched average GMACs",
              "versions": "AdaFocus V1 vs V2 vs Uni-AdaFocus at equal cost"}
    lines = ["# Ablations on the synthetic focus task", "",
             (f"Base preset `{report['preset']}`{' (quick)' if report['quick'] else ''}: {report['epochs']} epochs, "
             f"{report['train_samples']} training clips, {report['test_samples']} test clips; every row trained "
             "with the same seed and data. Accuracy at the last exit on the test split; centre-in-box = fraction of "
             "focus patches on object frames that contain the object's centre; object frames = fraction of focus "
             "frames that show the object."), ""]
    for name, rows in report["tables"].items():
        lines += [f"## {titles[name]}", "", "| row | accuracy | centre in box | object frames | GMACs/clip |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['row']} | {r['accuracy']:.3f} | {r['centre_in_box']:.3f} | {r['object_frame_rate']:.3f} "
                  f"| {r['mean_gmacs']:.4f} |" for r in rows]
        if "budget_curve" in rows[0]:
            budgets = [p["budget"] for p in rows[0]["budget_curve"]]
            lines += ["", ("Accuracy at average budgets (GMACs/clip); sample-wise on = entropy exits fitted on the "
                           "calibration split / off = random exits with the same proportions:"), "",
                      "| row | " + " | ".join(f"{b:.4f} on / off" for b in budgets) + " |",
                      "|---|" + "---|" * len(budgets)]
            lines += [f"| {r['row']} | " + " | ".join(f"{_fmt(p['adaptive'])} / {_fmt(p['random'])}"
                                                        for p in r["budget_curve"]) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def plot_tables(report: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, rows in report["tables"].items():
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
        if "budget_curve" in rows[0]:
            for r in rows:
                pts = [p for p in r["budget_curve"] if p["adaptive"] is not None]
                line, = ax.plot([p["budget"] for p in pts], [p["adaptive"] for p in pts], marker="o", label=r["row"])
                ax.plot([p["budget"] for p in pts], [p["random"] for p in pts], ls="--", color=line.get_color())
            ax.set_xlabel("average GMACs per clip (solid: adaptive exit, dashed: random exit)")
            ax.set_ylabel("accuracy")
            ax.legend(fontsize=7)
        else:
            ax.barh([r["row"] for r in rows][::-1], [r["accuracy"] for r in rows][::-1])
            ax.set_xlabel("test accuracy (last exit)")
            ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"Table {name}" if name != "versions" else "V1 vs V2 vs Uni", fontsize=9)
        fig.tight_layout()
        tmp = out_dir / f".ablations_{name}.tmp.png"
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        tmp.replace(out_dir / f"ablations_{name}.png")


def bench_ablations_command(args) -> int:
    tables = tuple(args.tables.split(",")) if args.tables else TABLES
    rows = tuple(args.rows.split(",")) if args.rows else None
    report = run_ablations(Path(args.out), preset_name=args.preset, quick=args.quick, epochs=args.epochs,
                           train_samples=args.train_samples, tables=tables, rows=rows, device=args.device)
    print(render_markdown(report))
    return 0
