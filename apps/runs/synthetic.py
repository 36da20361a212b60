"""Training, calibration and evaluation on the synthetic focus task, where the truth is known: which frames
hold the object and where it is. Used by `adafocus demo`, `adafocus train --data synthetic` and the tests
that prove the policy learns to look at the right place."""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import torch
from adafocus.core.config import Preset, get_preset
from adafocus.core.exits import ExitPolicy, exit_accuracy, random_exit_accuracy
from adafocus.core.geometry import box_contains_points
from adafocus.core.io import atomic_write_json, atomic_write_text
from adafocus.core.model import UniAdaFocus
from adafocus.core.run import ModelCard, RunFolder, frames_input, load_run, make_card
from adafocus.core.train import calibrate, train
from adafocus.datasets.synthetic import FocusTaskConfig, SyntheticFocusDataset, collate, object_centre
from torch.utils.data import DataLoader

SPLIT_SEEDS = {"train": 1, "val": 2, "calibration": 3, "test": 4}


def synthetic_splits(preset: Preset) -> dict[str, SyntheticFocusDataset]:
    """Disjoint train / val / calibration / test sets (different seeds) at the preset's sizes and frame count."""
    task = FocusTaskConfig(**{"num_frames": preset.model.num_candidates, "frame_size": preset.model.frame_size,
                              "num_classes": preset.model.num_classes, **preset.data.task})
    sizes = {"train": preset.data.train_samples, "val": preset.data.val_samples,
             "calibration": preset.data.calibration_samples, "test": preset.data.test_samples}
    return {name: SyntheticFocusDataset(sizes[name], task, seed=SPLIT_SEEDS[name]) for name in sizes}


def synthetic_card(preset: Preset) -> ModelCard:
    """Model card of a synthetic-task model: its calibration split is the task's own (seeded) one."""
    model = preset.to_dict()["model"]
    return make_card("synthetic", preset.to_dict(), [f"class_{i}" for i in range(preset.model.num_classes)],
                     frames_input(model, task=dict(preset.data.task)),
                     {"source": "synthetic", "subset": "calibration", "seed": SPLIT_SEEDS["calibration"],
                      "samples": preset.data.calibration_samples})


def train_synthetic(preset: Preset, out_dir: str | Path, *, device: str = "auto", resume: bool = True,
                    progress: bool = True, log=print) -> dict:
    """Train on the synthetic task's train split (val for model selection) into a run folder."""
    splits = synthetic_splits(preset)
    return train(preset, splits["train"], splits["val"], out_dir, device=device, resume=resume, collate_fn=collate,
                 progress=progress, log=log, card=synthetic_card(preset))


def with_policies(model: UniAdaFocus, *, patch_policy: str | None = None,
                  frame_policy: str | None = None) -> UniAdaFocus:
    """The same trained weights driven by other (baseline) policies, for comparisons at equal patch cost."""
    variant = copy.copy(model)
    changes = {k: v for k, v in (("patch_policy", patch_policy), ("frame_policy", frame_policy)) if v}
    variant.config = dataclasses.replace(model.config, **changes)
    variant._exit_costs = None
    return variant


@torch.no_grad()
def evaluate_focus(model: UniAdaFocus, dataset: SyntheticFocusDataset, *, exit_policy: ExitPolicy | None = None,
                   batch_size: int = 100, seed: int = 0) -> dict:
    """Accuracy and how well the chosen frames / boxes match the ground truth.

    centre_in_box: over processed focus steps on frames that hold the object, the fraction of boxes that
    contain the object's centre. object_frame_rate: fraction of processed focus steps on object frames.
    """
    torch.manual_seed(seed)  # random / gaussian baselines draw positions
    model.eval()
    frame_size = model.config.frame_size
    totals = {"correct": 0, "samples": 0, "hits": 0, "object_steps": 0, "steps": 0, "gmacs": 0.0}
    all_logits, all_labels, all_exits = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        result = model.infer(batch["clip"], exit_policy)
        labels = batch["label"]
        totals["correct"] += int((result.prediction == labels).sum())
        totals["samples"] += len(labels)
        totals["gmacs"] += float(result.gmacs.sum())
        processed = result.frame_indices >= 0
        safe_indices = result.frame_indices.clamp(min=0)
        on_object = batch["object_frames"].gather(1, safe_indices) & processed
        truth = batch["object_boxes"].gather(1, safe_indices[..., None].expand(-1, -1, 4))
        inside = box_contains_points(result.boxes, object_centre(truth) / frame_size)
        totals["hits"] += int((inside & on_object).sum())
        totals["object_steps"] += int(on_object.sum())
        totals["steps"] += int(processed.sum())
        all_logits.append(result.logits)
        all_labels.append(labels)
        all_exits.append(result.exit_index)
    n = totals["samples"]
    metrics = {
        "accuracy": totals["correct"] / n,
        "mean_gmacs": totals["gmacs"] / n,
        "centre_in_box": totals["hits"] / max(totals["object_steps"], 1),
        "object_frame_rate": totals["object_steps"] / max(totals["steps"], 1),
        "samples": n,
    }
    if exit_policy is not None:
        logits, labels, exits = torch.cat(all_logits), torch.cat(all_labels), torch.cat(all_exits)
        metrics["exit_fractions"] = (torch.bincount(exits, minlength=model.config.num_exits).double() / n).tolist()
        metrics["accuracy_at_exits"] = exit_accuracy(torch.nan_to_num(logits), labels, exits)
        metrics["_exits"] = exits
    return metrics


def random_exit_baseline(model: UniAdaFocus, dataset: SyntheticFocusDataset, exit_index: torch.Tensor) -> float:
    """Accuracy of exiting at random with the same exit proportions (the paper's random-exit baseline)."""
    logits, labels = [], []
    model.eval()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=100, collate_fn=collate):
            logits.append(model.infer(batch["clip"]).logits)
            labels.append(batch["label"])
    return random_exit_accuracy(torch.cat(logits), torch.cat(labels), exit_index)


BASELINE_POLICIES = {"random_patches": {"patch_policy": "random"}, "centre_patches": {"patch_policy": "center"},
                     "uniform_frames": {"frame_policy": "uniform"}}


def compare_policies(model: UniAdaFocus, dataset: SyntheticFocusDataset,
                     baselines: dict[str, dict] = BASELINE_POLICIES) -> dict[str, dict]:
    """Learned policies against the baselines (name -> ``with_policies`` arguments), all with the same trained
    weights and patch budget."""
    variants = {"learned": model, **{name: with_policies(model, **policies) for name, policies in baselines.items()}}
    return {name: evaluate_focus(variant, dataset) for name, variant in variants.items()}


@torch.no_grad()
def chosen_focus(model: UniAdaFocus, dataset, *, batch_size: int = 100, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per sample, where the model looked (no early exit): ``frame_indices`` [N, T'] (candidate frames) and
    ``boxes`` [N, T', 4] (frame fractions)."""
    torch.manual_seed(seed)  # random baselines draw positions
    model.eval()
    frames, boxes = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        result = model.infer(batch["clip"])
        frames.append(result.frame_indices)
        boxes.append(result.boxes)
    return {"frame_indices": torch.cat(frames), "boxes": torch.cat(boxes)}


def run_demo(out_dir: Path, *, epochs: int | None = None, device: str = "auto", preset_name: str = "cpu-synthetic",
             log=print) -> dict:
    """Train -> calibrate -> evaluate on the synthetic task; writes results.json, report.md and a figure."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    preset = get_preset(preset_name)
    if epochs is not None:
        preset.train.epochs = epochs
    splits = synthetic_splits(preset)
    run = RunFolder(out_dir / "run")
    run_dir = run.path
    log(f"[1/4] training {preset_name} on the synthetic focus task -> {run_dir}")
    train_synthetic(preset, run_dir, device=device, log=log)
    model = load_run(run.best, device="cpu").model

    costs = model.exit_costs()
    budget = 0.5 * (costs[0] + costs[-1])
    log(f"[2/4] fitting exit thresholds for {budget:.4f} GMACs/sample on the calibration split")
    loader = DataLoader(splits["calibration"], batch_size=100, collate_fn=collate)
    policy = calibrate(model, loader, budget, device="cpu", out_dir=run_dir)

    log("[3/4] evaluating learned policies against random / centre patches and uniform frames")
    comparison = compare_policies(model, splits["test"])
    budgeted = evaluate_focus(model, splits["test"], exit_policy=policy)
    exits = budgeted.pop("_exits")
    budgeted["random_exit_accuracy"] = random_exit_baseline(model, splits["test"], exits)
    budgeted["budget"] = budget

    log("[4/4] writing the report and a figure of what the model looked at")
    figure = out_dir / "focus_examples.png"
    plot_focus_examples(model, splits["test"], figure)
    results = {"preset": preset_name, "exit_costs_gmacs": costs, "policies": comparison, "budgeted": budgeted,
               "seconds": time.perf_counter() - started}
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "report.md", _report_markdown(results))
    log(f"done in {results['seconds']:.0f}s. Results: {out_dir / 'report.md'}, {out_dir / 'results.json'}, "
        f"{figure}, checkpoint {run.best}, thresholds {run.exit_policy()}")
    return results


def _report_markdown(results: dict) -> str:
    lines = ["# Synthetic focus task: does the policy look at the right place?", "",
             "| policy | accuracy | centre in box | object-frame rate | GMACs/sample |", "|---|---|---|---|---|"]
    for name, m in results["policies"].items():
        lines.append(f"| {name} | {m['accuracy']:.3f} | {m['centre_in_box']:.3f} | {m['object_frame_rate']:.3f} "
                     f"| {m['mean_gmacs']:.4f} |")
    b = results["budgeted"]
    lines += ["", (f"Early exit at a budget of {b['budget']:.4f} GMACs/sample: measured {b['mean_gmacs']:.4f} on "
                   f"the test split, accuracy {b['accuracy']:.3f} (random exiting with the same exit proportions: "
                   f"{b['random_exit_accuracy']:.3f})."), ""]
    return "\n".join(lines)


def plot_focus_examples(model: UniAdaFocus, dataset: SyntheticFocusDataset, path: Path, num_clips: int = 4) -> None:
    """A grid: one row per clip, every candidate frame; chosen frames framed, chosen boxes in yellow,
    ground-truth boxes in cyan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    batch = collate([dataset[i] for i in range(num_clips)])
    result = model.infer(batch["clip"])
    frames, size = batch["clip"].shape[1], model.config.frame_size
    fig, axes = plt.subplots(num_clips, frames, figsize=(1.6 * frames, 1.7 * num_clips), squeeze=False)
    for row in range(num_clips):
        chosen = {int(f): k for k, f in enumerate(result.frame_indices[row]) if f >= 0}
        for t in range(frames):
            ax = axes[row][t]
            ax.imshow(batch["clip"][row, t].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if batch["object_frames"][row, t]:
                x0, y0, x1, y1 = batch["object_boxes"][row, t].tolist()
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1))
            if t in chosen:
                x0, y0, x1, y1 = (result.boxes[row, chosen[t]] * size).tolist()
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.5))
                for spine in ax.spines.values():
                    spine.set_edgecolor("yellow"), spine.set_linewidth(3)
            if row == 0:
                ax.set_title(f"t={t}", fontsize=8)
        axes[row][0].set_ylabel(f"class {int(batch['label'][row])}", fontsize=8)
    fig.suptitle("chosen frames/boxes (yellow) vs ground truth (cyan)", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
