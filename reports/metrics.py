"""Binary classification metrics (ClinicaDL's set plus AUC) and percentile-bootstrap confidence intervals.

Label 1 is the positive class (e.g. AD, PD): sensitivity = recall of 1, specificity = recall of 0.
Undefined values (no positive sample, one class only for AUC) are NaN, never an exception.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc")


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def binary_metrics(labels: np.ndarray, predictions: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """labels, predictions in {0, 1} and positive-class probabilities, all [N] -> the METRICS dict."""
    labels, predictions = np.asarray(labels, dtype=int), np.asarray(predictions, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    if not labels.shape == predictions.shape == probabilities.shape or labels.ndim != 1:
        raise ValueError(f"labels, predictions and probabilities must be 1D of one length, got "
                         f"{labels.shape}, {predictions.shape}, {probabilities.shape}")
    if not set(np.unique(labels)) | set(np.unique(predictions)) <= {0, 1}:
        raise ValueError("binary metrics need labels and predictions in {0, 1}")
    tp = int(((labels == 1) & (predictions == 1)).sum())
    tn = int(((labels == 0) & (predictions == 0)).sum())
    sensitivity = _ratio(tp, int((labels == 1).sum()))
    specificity = _ratio(tn, int((labels == 0).sum()))
    both = len(np.unique(labels)) == 2
    return {
        "accuracy": _ratio(tp + tn, len(labels)),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "auc": float(roc_auc_score(labels, probabilities)) if both else float("nan"),
    }


def confusion_counts(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """2 x 2 int matrix, rows = true label (0, 1), columns = predicted label."""
    matrix = np.zeros((2, 2), dtype=int)
    np.add.at(matrix, (np.asarray(labels, dtype=int), np.asarray(predictions, dtype=int)), 1)
    return matrix


def bootstrap_ci(labels: np.ndarray, predictions: np.ndarray, probabilities: np.ndarray, *,
                 groups: np.ndarray | None = None, n_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0, metric_fn: Callable[..., dict[str, float]] = binary_metrics
                 ) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI of every metric: (low, high) per name.

    With `groups` (e.g. participant ids) whole groups are resampled, so repeat scans of one person stay
    together. Resamples where a metric is undefined (one class only) are skipped for that metric."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    probabilities = np.asarray(probabilities)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    unique, members = np.unique(groups, return_inverse=True)
    index_of = [np.flatnonzero(members == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        picked = np.concatenate([index_of[g] for g in rng.integers(0, len(unique), len(unique))])
        for name, value in metric_fn(labels[picked], predictions[picked], probabilities[picked]).items():
            samples.setdefault(name, []).append(value)
    tail = 100 * (1 - level) / 2
    intervals = {}
    for name, values in samples.items():
        finite = np.asarray(values)[np.isfinite(values)]
        intervals[name] = ((float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail)))
                           if finite.size else (float("nan"), float("nan")))
    return intervals


# ------------------------------------------------------------------------------------------------ triage
def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Uncertainty of each prediction, [N, C] class probabilities -> [N] entropy / ln C in [0, 1]."""
    p = np.clip(np.asarray(probabilities, dtype=float), 0.0, 1.0)
    terms = p * np.log(np.where(p > 0, p, 1.0))  # 0 log 0 = 0, so a certain prediction scores exactly 0
    return -terms.sum(axis=-1) / np.log(p.shape[-1])


def fit_review_threshold(uncertainty: np.ndarray, errors: np.ndarray | None = None, *,
                         flag_share: float | None = None, max_error: float | None = None) -> float:
    """"Needs review" threshold on an uncertainty score (flag when uncertainty >= threshold), fitted on
    validation items for one stated target:

    - ``flag_share``: flag the least certain ``flag_share`` of the items;
    - ``max_error``: flag the fewest least-certain items such that the error rate among the unflagged
      (``errors``: 1 where the model was wrong) is at most ``max_error``.

    Returns +inf when nothing needs flagging (so nothing is), and the smallest score when all must be."""
    scores = np.asarray(uncertainty, dtype=float)
    if (flag_share is None) == (max_error is None):
        raise ValueError("give exactly one target: flag_share or max_error")
    if scores.ndim != 1 or not scores.size:
        raise ValueError("need a non-empty 1D array of uncertainty scores")
    order = np.argsort(-scores, kind="stable")  # least certain first
    if flag_share is not None:
        if not 0.0 <= flag_share <= 1.0:
            raise ValueError(f"flag_share must be in [0, 1], got {flag_share}")
        flagged = round(flag_share * scores.size)
    else:
        wrong = np.asarray(errors, dtype=float)[order]
        if wrong.shape != scores.shape:
            raise ValueError("errors must match uncertainty in shape")
        unflagged_errors = wrong[::-1].cumsum()[::-1]  # errors among items k.. when the first k are flagged
        remaining = np.arange(scores.size, 0, -1)
        ok = np.append(unflagged_errors / remaining <= max_error, True)  # flagging everything always meets it
        flagged = int(np.argmax(ok))
    return float("inf") if flagged == 0 else float(scores[order[flagged - 1]])


def triage_summary(uncertainty: np.ndarray, errors: np.ndarray, threshold: float) -> dict[str, float]:
    """How items split at a threshold: flagged share and the error rate among flagged and unflagged items
    (NaN for an empty group)."""
    flagged = np.asarray(uncertainty, dtype=float) >= threshold
    wrong = np.asarray(errors, dtype=bool)
    return {"flagged": int(flagged.sum()), "items": int(flagged.size),
            "flagged_share": _ratio(int(flagged.sum()), flagged.size),
            "error_flagged": _ratio(int((wrong & flagged).sum()), int(flagged.sum())),
            "error_unflagged": _ratio(int((wrong & ~flagged).sum()), int((~flagged).sum()))}


def follow_correlation(truth: np.ndarray, chosen: np.ndarray) -> float:
    """Pearson correlation across samples between where the target was and where the model looked, both [N].
    A choice that does not vary (the same place for everyone) follows nothing: 0, not NaN."""
    truth, chosen = np.asarray(truth, dtype=float), np.asarray(chosen, dtype=float)
    if truth.shape != chosen.shape or truth.ndim != 1:
        raise ValueError(f"need two 1D arrays of one length, got {truth.shape} and {chosen.shape}")
    if len(truth) < 2 or np.ptp(truth) == 0 or np.ptp(chosen) < 1e-9:
        return 0.0
    return float(np.corrcoef(truth, chosen)[0, 1])


def best_fixed_place_hit_rate(centres: np.ndarray, sides: np.ndarray, frame_size: float, step: float = 1.0) -> float:
    """The most often a target centre can fall inside boxes placed at one fixed place for every sample.

    centres [N, 2] (x, y) are the targets, sides [N, 2] (width, height) the boxes' sizes, all in frame pixels.
    Every box centre on a grid of `step` pixels over the frame is tried (boxes keep their own sizes; a box's
    edge may pass the frame's, which only helps the fixed place). This is the ceiling of a policy that looks
    at the same place for everyone; boxes that hold the target more often than this move with it."""
    centres, sides = np.asarray(centres, dtype=float), np.asarray(sides, dtype=float)
    if centres.shape != sides.shape or centres.ndim != 2 or centres.shape[1] != 2:
        raise ValueError(f"need centres and sides of shape [N, 2], got {centres.shape} and {sides.shape}")
    if len(centres) == 0:
        return float("nan")
    grid = np.arange(0.0, frame_size + step / 2, step)
    inside = [np.abs(grid[:, None] - centres[None, :, a]) <= sides[None, :, a] / 2 for a in (0, 1)]  # [G, N]
    joint = inside[0].astype(np.float32) @ inside[1].T.astype(np.float32)  # [Gx, Gy]: hits per fixed centre
    return float(joint.max() / len(centres))
