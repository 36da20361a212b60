"""Matplotlib (Agg, no display) figures for the cross-validation report, each written atomically as PNG."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from adafocus.core.io import atomic_write
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.metrics import roc_curve


def save_figure(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi)
    return Path(path)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """One ROC curve per entry {name: (labels, positive-class probabilities)}; AUC-free (names carry it)."""
    figure = Figure(figsize=(4.6, 4.2))
    ax = figure.add_subplot()
    for name, (labels, probabilities) in curves.items():
        if len(np.unique(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, probabilities)
        ax.plot(fpr, tpr, lw=2.2 if name.startswith("pooled") else 1.0, label=name)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02), title="ROC")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(figure, path)


def plot_confusion(matrices: dict[str, np.ndarray], class_names: Sequence[str], path: str | Path) -> Path:
    """Confusion matrices (rows = truth, columns = prediction) side by side, one per entry."""
    figure = Figure(figsize=(2.4 * len(matrices) + 0.4, 2.8))
    for k, (name, matrix) in enumerate(matrices.items()):
        ax = figure.add_subplot(1, len(matrices), k + 1)
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black")
        ax.set_xticks(range(len(class_names)), class_names, fontsize=7)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
        ax.set_title(name, fontsize=8)
        if k == 0:
            ax.set_ylabel("true")
        ax.set_xlabel("predicted", fontsize=7)
    return save_figure(figure, path)


def plot_accuracy_vs_gmacs(curves: dict[str, tuple[np.ndarray, np.ndarray]],
                           operating_points: dict[str, tuple[float, float]], path: str | Path) -> Path:
    """Accuracy against mean GMACs per scan: curves {name: (gmacs, accuracy)} and marked points."""
    figure = Figure(figsize=(5.0, 3.8))
    ax = figure.add_subplot()
    for name, (gmacs, accuracy) in curves.items():
        order = np.argsort(gmacs)
        ax.plot(np.asarray(gmacs)[order], np.asarray(accuracy)[order], marker=".", lw=1, label=name)
    for name, (gmacs, accuracy) in operating_points.items():
        ax.scatter([gmacs], [accuracy], marker="*", s=120, zorder=5, label=name)
    ax.set(xlabel="mean GMACs per scan", ylabel="accuracy (test folds)", title="Accuracy vs compute")
    ax.legend(fontsize=7)
    return save_figure(figure, path)


def plot_selected_slices(panels: Sequence[dict], path: str | Path) -> Path:
    """One row per scan: its focus frames with the chosen box drawn.

    panels: dicts with "title" (str), "frames" (list of 2D arrays in [0, 1]), "boxes" (list of
    (x0, y0, x1, y1) frame fractions), "captions" (list of str, one per frame)."""
    columns = max((len(p["frames"]) for p in panels), default=1) or 1
    figure = Figure(figsize=(1.9 * columns + 0.2, 2.1 * max(len(panels), 1)))
    for r, panel in enumerate(panels):
        for c, (frame, box, caption) in enumerate(zip(panel["frames"], panel["boxes"], panel["captions"])):
            ax = figure.add_subplot(len(panels), columns, r * columns + c + 1)
            h, w = frame.shape
            ax.imshow(frame, cmap="gray", vmin=0, vmax=1)
            x0, y0, x1, y1 = box
            ax.add_patch(Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h,
                                   fill=False, edgecolor="orange", lw=1.5))
            ax.set_title(caption, fontsize=7)
            ax.set_axis_off()
            if c == 0:
                ax.text(-0.08, 0.5, panel["title"], transform=ax.transAxes, rotation=90, ha="right",
                        va="center", fontsize=7)
    return save_figure(figure, path)
