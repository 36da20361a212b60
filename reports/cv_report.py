"""Assemble a cross-validation folder (written by apps.cv) into metrics.tsv, report.md and report.html.

With the reference models (fold-<i>/baselines/, apps.runs.baselines) on every fold, the report compares the
dynamic model with them (balanced accuracy mean ± SD over folds, GMACs per scan), and cv.json gets the same
table under "comparison".

DIR/metrics.tsv columns: metric, fold-0 .. fold-(k-1), mean, sd (sample SD over folds), pooled (all test
folds' baseline predictions together), ci_low, ci_high (percentile bootstrap of the pooled value,
resampling participants). Figures (PNG, referenced by both reports): roc.png, confusion.png,
accuracy_vs_gmacs.png, selected_slices.png. Only the datasets' own participant codes appear.
"""
from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from adafocus.core.io import atomic_write_json, atomic_write_text
from adafocus.datasets.mri.dataset import ClipSpec, MRISliceDataset, is_usable
from adafocus.datasets.mri.manifest import read_manifest
from adafocus.reports.metrics import METRICS, binary_metrics, bootstrap_ci, confusion_counts, triage_summary
from adafocus.reports.plots import plot_accuracy_vs_gmacs, plot_confusion, plot_roc, plot_selected_slices
from adafocus.reports.tables import read_tsv, tsv_text

CV_JSON = "cv.json"
PREDICTIONS_FILE = "predictions.tsv"  # per fold: one row per test scan
BASELINES_DIR = "baselines"  # per fold: the reference models of apps.runs.baselines, one <name>.json each
DYNAMIC_TITLE = "Dynamic (Uni-AdaFocus)"
BASELINE_TITLES = {"static": "Static 2.5D (every slice, local encoder)",
                   "classical": "Classical (hippocampus + ventricle regions, logistic regression)"}
BOOTSTRAP_RESAMPLES = 2000
FIGURES = {"roc": "roc.png", "confusion": "confusion.png", "accuracy_vs_gmacs": "accuracy_vs_gmacs.png",
           "selected_slices": "selected_slices.png"}
METRIC_TITLES = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "sensitivity": "Sensitivity",
                 "specificity": "Specificity", "auc": "AUC"}


def fold_dir(cv_dir: str | Path, index: int) -> Path:
    return Path(cv_dir) / f"fold-{index}"


def baseline_dir(cv_dir: str | Path, index: int) -> Path:
    """Where fold `index`'s reference models write their files."""
    return fold_dir(cv_dir, index) / BASELINES_DIR


def baseline_file(name: str) -> str:
    """A reference model's per-fold result file name (its metrics and GMACs per scan; written last)."""
    return f"{name}.json"


def load_baselines(cv_dir: Path, n_folds: int) -> dict[str, list[dict]]:
    """Each reference model's per-fold results (apps.runs.baselines), for the models every fold has."""
    found = {}
    for name in BASELINE_TITLES:
        paths = [baseline_dir(cv_dir, i) / baseline_file(name) for i in range(n_folds)]
        if all(p.exists() for p in paths):
            found[name] = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    return found


def _spread(values: list[float]) -> dict:
    """{"folds", "mean", "sd"} of per-fold values (sample SD; None where undefined, as JSON has no NaN)."""
    finite = np.array([v for v in values if np.isfinite(v)])
    mean = float(finite.mean()) if finite.size else None
    sd = float(finite.std(ddof=1)) if finite.size > 1 else None
    return {"folds": [float(v) if np.isfinite(v) else None for v in values], "mean": mean, "sd": sd}


def comparison(rows: list[dict], baselines: dict[str, list[dict]]) -> list[dict]:
    """The dynamic model (metrics.tsv rows) and each reference model on the same folds: balanced accuracy per
    fold, mean and SD over folds, mean GMACs per scan (what cv.json's "comparison" holds)."""
    by_metric = {r["metric"]: r for r in rows}
    n_folds = sum(1 for k in by_metric["balanced_accuracy"] if k.startswith("fold-"))
    entries = [{"model": "dynamic", "title": DYNAMIC_TITLE,
                "balanced_accuracy": _spread([by_metric["balanced_accuracy"][f"fold-{i}"] for i in range(n_folds)]),
                "gmacs_per_scan": float(by_metric["mean_gmacs"]["mean"])}]
    for name, folds in baselines.items():
        entries.append({"model": name, "title": BASELINE_TITLES[name],
                        "balanced_accuracy": _spread([f["metrics"]["balanced_accuracy"] for f in folds]),
                        "gmacs_per_scan": float(np.mean([f["gmacs_per_scan"] for f in folds]))})
    return entries


def _num(value: float | None, digits: int = 3) -> str:
    return _fmt(float("nan") if value is None else value, digits)


def comparison_lines(entries: list[dict]) -> list[str]:
    """The report's section comparing the dynamic model with the reference models run on the same folds."""
    lines = ["", "## Dynamic vs static vs classical", ""]
    if len(entries) == 1:
        return lines + [("- reference models not run (`adafocus cv --no-baselines`); rerun `cv` without it on the "
                         "same folder to add them (finished folds are not retrained)")]
    n_folds = len(entries[0]["balanced_accuracy"]["folds"])
    lines += [("Same folds (participant splits) for every model; balanced accuracy at each test participant's first "
               "session. Static 2.5D: every candidate slice through the local encoder at the patch size, averaged, "
               "one linear head, trained with the same recipe and epochs. Classical: mean intensity and tissue "
               "volume in MNI boxes around the hippocampi and lateral ventricles, standardised logistic regression "
               "(apps/runs/baselines.py)."), "",
              "| model | balanced accuracy mean ± SD over folds | "
              + " | ".join(f"fold {i}" for i in range(n_folds)) + " | GMACs per scan |",
              "|---|---|" + "---|" * n_folds + "---|"]
    for e in entries:
        ba = e["balanced_accuracy"]
        gmacs = "≈ 0" if e["model"] == "classical" else _num(e["gmacs_per_scan"], 4)
        lines.append(f"| {e['title']} | {_num(ba['mean'])} ± {_num(ba['sd'])} | "
                     + " | ".join(_num(v) for v in ba["folds"]) + f" | {gmacs} |")
    by_model = {e["model"]: e for e in entries}
    dynamic, static = by_model["dynamic"], by_model.get("static")
    if static and static["gmacs_per_scan"] > 0 and dynamic["balanced_accuracy"]["mean"] is not None \
            and static["balanced_accuracy"]["mean"] is not None:
        difference = dynamic["balanced_accuracy"]["mean"] - static["balanced_accuracy"]["mean"]
        lines += ["", (f"Adaptivity: the dynamic model used {dynamic['gmacs_per_scan'] / static['gmacs_per_scan']:.0%} "
                       f"of the static model's GMACs per scan, at a balanced accuracy {difference:+.3f} from it "
                       f"(mean over folds).")]
    return lines


def record_comparison(cv_dir: Path, entries: list[dict]) -> None:
    """Store the comparison in cv.json under "comparison" (the experiment's other keys unchanged)."""
    path = cv_dir / CV_JSON
    experiment = json.loads(path.read_text(encoding="utf-8"))
    if experiment.get("comparison") != entries:
        atomic_write_json(path, {**experiment, "comparison": entries})


def load_fold_tables(cv_dir: Path, n_folds: int) -> list[dict]:
    """Each fold's predictions, metrics and budget curve; ValueError naming unfinished folds."""
    missing = [i for i in range(n_folds) if not (fold_dir(cv_dir, i) / "metrics.tsv").exists()]
    if missing:
        raise ValueError(f"fold(s) {', '.join(map(str, missing))} of {cv_dir} are not finished; run "
                         f"`adafocus cv MANIFEST --out {cv_dir} --fold i` for each, then assemble the report")
    return [{"predictions": read_tsv(fold_dir(cv_dir, i) / PREDICTIONS_FILE),
             "metrics": {r["metric"]: float(r["value"]) for r in read_tsv(fold_dir(cv_dir, i) / "metrics.tsv")},
             "curve": read_tsv(fold_dir(cv_dir, i) / "budget_curve.tsv")} for i in range(n_folds)]


def _arrays(predictions: list[dict]) -> dict[str, np.ndarray]:
    base = [p for p in predictions if int(p["baseline"])]
    return {"labels": np.array([int(p["label"]) for p in base]),
            "predictions": np.array([int(p["prediction"]) for p in base]),
            "probabilities": np.array([float(p["probability"]) for p in base]),
            "participants": np.array([p["participant_id"] for p in base]),
            "gmacs": np.array([float(p["gmacs"]) for p in base])}


def summary_rows(folds: list[dict], pooled: dict[str, np.ndarray], *, seed: int = 0) -> list[dict]:
    """The DIR/metrics.tsv rows (see module docstring), numbers as floats."""
    pooled_values = binary_metrics(pooled["labels"], pooled["predictions"], pooled["probabilities"])
    intervals = bootstrap_ci(pooled["labels"], pooled["predictions"], pooled["probabilities"],
                             groups=pooled["participants"], n_resamples=BOOTSTRAP_RESAMPLES, seed=seed)
    rows = []
    for name in METRICS:
        per_fold = np.array([f["metrics"][name] for f in folds])
        finite = per_fold[np.isfinite(per_fold)]
        rows.append({"metric": name, **{f"fold-{i}": v for i, v in enumerate(per_fold)},
                     "mean": float(finite.mean()) if finite.size else float("nan"),
                     "sd": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
                     "pooled": pooled_values[name], "ci_low": intervals[name][0], "ci_high": intervals[name][1]})
    gmacs = np.array([f["metrics"]["mean_gmacs"] for f in folds])
    rows.append({"metric": "mean_gmacs", **{f"fold-{i}": v for i, v in enumerate(gmacs)}, "mean": float(gmacs.mean()),
                 "sd": float(gmacs.std(ddof=1)) if len(gmacs) > 1 else float("nan"),
                 "pooled": float(pooled["gmacs"].mean()), "ci_low": float("nan"), "ci_high": float("nan")})
    return rows


def _selected_slice_panels(predictions: list[dict], experiment: dict, per_class: int = 2) -> list[dict]:
    """Panels for `plot_selected_slices`: the first `per_class` baseline test scans of each class."""
    candidates = sorted((p for p in predictions if int(p["baseline"]) and p["slices"]),
                        key=lambda p: p["participant_id"])
    if not candidates:
        return []
    spec = ClipSpec(**experiment["clip"])
    manifest = {(r.participant_id, r.session_id): r for r in read_manifest(experiment["manifest"]) if is_usable(r)}
    chosen, counts = [], {}
    for p in candidates:
        label = int(p["label"])
        if counts.get(label, 0) < per_class and (p["participant_id"], p["session_id"]) in manifest:
            counts[label] = counts.get(label, 0) + 1
            chosen.append(p)
    dataset = MRISliceDataset([manifest[(p["participant_id"], p["session_id"])] for p in chosen], spec)
    panels = []
    for k, p in enumerate(chosen):
        clip, info = dataset.clip_and_info(k)
        slices = [int(s) for s in p["slices"].split(";")]
        boxes = [tuple(float(v) for v in b.split()) for b in p["boxes"].split(";")]
        positions = [info.slice_indices.index(s) for s in slices]
        panels.append({
            "title": f"{p['participant_id']} {p['session_id']}\nlabel {p['label']}, p={float(p['probability']):.2f}",
            "frames": [clip[t, clip.shape[1] // 2].numpy() for t in positions],
            "boxes": boxes,
            "captions": [f"{spec.axis} {s}" for s in slices]})
    return panels


def triage_lines(predictions: list[dict]) -> list[str]:
    """The report's triage section: how often the model was wrong among the test scans flagged "needs
    review" (threshold fitted per fold on its validation split) and among the rest (baseline sessions)."""
    base = [p for p in predictions if int(p["baseline"]) and p.get("needs_review", "") != ""]
    if not base:
        return []
    flagged = np.array([int(p["needs_review"]) for p in base], dtype=float)
    errors = np.array([int(p["prediction"]) != int(p["label"]) for p in base])
    t = triage_summary(flagged, errors, 0.5)
    return ["", "## Triage", "",
            ("Each fold's \"needs review\" threshold (normalised entropy) is fitted on its validation split for a "
             "target error rate among the unflagged scans (see review_threshold.json in each fold)."), "",
            "| | scans | model wrong |", "|---|---|---|",
            (f"| flagged \"needs review\" | {t['flagged']} of {t['items']} ({_fmt(t['flagged_share'])}) | "
             f"{_fmt(t['error_flagged'])} |"),
            f"| not flagged | {t['items'] - t['flagged']} | {_fmt(t['error_unflagged'])} |"]


def chance_level(ci_low: float, ci_high: float) -> str:
    """Where chance (0.5) lies relative to a balanced accuracy's CI: "above" (the CI lies above 0.5), "below",
    "includes" or "unknown" (no finite CI)."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "unknown"
    return "above" if ci_low > 0.5 else "below" if ci_high < 0.5 else "includes"


def chance_verdict(balanced_accuracy: dict) -> str:
    """One line on whether the pooled balanced accuracy (a metrics.tsv row) is above chance (0.5)."""
    low, high = balanced_accuracy["ci_low"], balanced_accuracy["ci_high"]
    interval = f"[{_fmt(low)}, {_fmt(high)}]"
    level = chance_level(low, high)
    if level == "unknown":
        return "**Chance level not assessed**: too few test participants for a confidence interval."
    if level == "above":
        return f"**Above chance**: the pooled balanced accuracy's 95% CI {interval} lies above 0.5."
    if level == "below":
        return (f"**Below chance**: the pooled balanced accuracy's 95% CI {interval} lies below 0.5; check the "
                f"labels (class order, --classes).")
    return (f"**Not distinguishable from chance**: the pooled balanced accuracy's 95% CI {interval} includes 0.5. "
            f"The slices and regions the model chose then carry no evidence about the diagnosis; more participants, "
            f"more epochs or the cpu-mri-imagenet recipe may help (docs/notes/mri-demo-recipe.md).")


def balanced_accuracy_row(cv_dir: str | Path) -> dict[str, float]:
    """The balanced_accuracy row of a finished report's metrics.tsv, as numbers (mean, sd, pooled, ci_low, ...)."""
    for row in read_tsv(Path(cv_dir) / "metrics.tsv"):
        if row["metric"] == "balanced_accuracy":
            return {k: float(v) for k, v in row.items() if k != "metric"}
    raise ValueError(f"{cv_dir}/metrics.tsv has no balanced_accuracy row")


def summary_line(numbers: dict[str, float]) -> str:
    """One line from a balanced_accuracy row (as numbers): over folds and pooled, and the chance verdict."""
    return (f"balanced accuracy {_fmt(numbers['mean'])} ± {_fmt(numbers['sd'])} over folds, pooled "
            f"{_fmt(numbers['pooled'])}. {chance_verdict(numbers).replace('**', '')}")


def cv_summary_line(cv_dir: str | Path) -> str:
    """``summary_line`` of a finished report's metrics.tsv."""
    return summary_line(balanced_accuracy_row(cv_dir))


def slice_variety(predictions: list[dict]) -> tuple[int, int]:
    """(distinct slice sets, scans) among a fold's baseline test scans: 1 means every scan got the same slices."""
    base = [p["slices"] for p in predictions if int(p["baseline"])]
    return len(set(base)), len(base)


def slice_variety_line(folds: list[dict]) -> str:
    counts = [slice_variety(f["predictions"]) for f in folds]
    per_fold = "; ".join(f"fold {i}: {sets} among {scans}" for i, (sets, scans) in enumerate(counts))
    return (f"- slice sets chosen for the test scans (1 = the same slices for every scan of the fold): {per_fold}")


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def left_out_line(left_out: list[dict]) -> str:
    """The report's line on the manifest rows that were not used (with why), e.g. QC-failed registrations."""
    if not left_out:
        return "- every manifest row was used"
    listed = "; ".join(f"{r['participant_id']} {r['session_id']}: {r['reason']}" for r in left_out[:20])
    more = f"; and {len(left_out) - 20} more (cv.json)" if len(left_out) > 20 else ""
    return f"- {len(left_out)} manifest row{'s' if len(left_out) != 1 else ''} left out: {listed}{more}"


def _markdown(experiment: dict, rows: list[dict], folds: list[dict], n_participants: int,
              comparison_section: Sequence[str] = ()) -> str:
    n_folds = len(folds)
    preset, clip = experiment["preset_name"], experiment["clip"]
    lines = [
        "# Cross-validation report", "",
        f"- manifest: `{experiment['manifest']}`",
        (f"- preset: `{preset}`; clips: {clip['num_slices']} {clip['axis']} slices of {clip['size']} px, "
        f"context {clip['context']} ({'2.5D' if clip['context'] else 'single slice'}), "
        f"{clip['discard_border']:.0%} discarded at each end"),
        (f"- {n_folds}-fold participant-level stratified group k-fold (seed {experiment['seed']}); model "
        f"selection and exit thresholds on an inner validation split "
        f"({experiment['validation_fraction']:.0%} of each fold's training participants)"),
        (f"- exit budget: {experiment['budget_gmacs'] if experiment['budget_gmacs'] is not None else 'none (last exit)'}"
        f" GMACs per scan"),
        (f"- metrics count each of the {n_participants} participants once (baseline session); 95% CIs: "
        f"percentile bootstrap over participants ({BOOTSTRAP_RESAMPLES} resamples) of the pooled test predictions"),
        left_out_line(experiment.get("left_out") or []),
        "", "| metric | mean ± SD over folds | pooled [95% CI] | " + " | ".join(f"fold {i}" for i in range(n_folds))
        + " |", "|---|---|---|" + "---|" * n_folds]
    for r in rows:
        digits = 4 if r["metric"] == "mean_gmacs" else 3
        title = METRIC_TITLES.get(r["metric"], "Mean GMACs per scan")
        ci = "" if not np.isfinite(r["ci_low"]) else f" [{_fmt(r['ci_low'], digits)}, {_fmt(r['ci_high'], digits)}]"
        lines.append(f"| {title} | {_fmt(r['mean'], digits)} ± {_fmt(r['sd'], digits)} | "
                     f"{_fmt(r['pooled'], digits)}{ci} | "
                     + " | ".join(_fmt(r[f"fold-{i}"], digits) for i in range(n_folds)) + " |")
    balanced = next(r for r in rows if r["metric"] == "balanced_accuracy")
    lines += ["", chance_verdict(balanced), "", slice_variety_line(folds), *comparison_section]
    captions = {"roc": "ROC curves (each test fold and pooled)", "confusion": "Confusion matrices",
                "accuracy_vs_gmacs": "Accuracy vs mean GMACs per scan (exit thresholds fitted on validation)",
                "selected_slices": "Slices and regions the focus policy selected (orange boxes)"}
    for key, name in FIGURES.items():
        lines += ["", f"## {captions[key]}", "", f"![{captions[key]}]({name})"]
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    """Escaped text with **bold** as <strong> and `code` marks dropped."""
    parts = html.escape(text).replace("`", "").split("**")
    return "".join(f"<strong>{part}</strong>" if i % 2 else part for i, part in enumerate(parts))


def _html(markdown: str) -> str:
    """A small, dependency-free rendering of the report's Markdown subset (headings, paragraphs, bullets, tables,
    images)."""
    body, in_table, in_list = [], False, False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}">')
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Cross-validation report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_cv_report(cv_dir: str | Path) -> Path:
    """Write DIR/metrics.tsv, the four figures, report.md and report.html, and cv.json's "comparison"; returns the
    report.md path."""
    cv_dir = Path(cv_dir)
    experiment = json.loads((cv_dir / CV_JSON).read_text(encoding="utf-8"))
    n_folds = experiment["folds"]
    folds = load_fold_tables(cv_dir, n_folds)
    all_predictions = [p for f in folds for p in f["predictions"]]
    pooled = _arrays(all_predictions)
    rows = summary_rows(folds, pooled, seed=experiment["seed"])
    columns = ["metric", *(f"fold-{i}" for i in range(n_folds)), "mean", "sd", "pooled", "ci_low", "ci_high"]
    atomic_write_text(cv_dir / "metrics.tsv", tsv_text(
        columns, [{k: (v if isinstance(v, str) else f"{v:.6g}") for k, v in r.items()} for r in rows]))

    per_fold = [_arrays(f["predictions"]) for f in folds]
    pooled_auc = binary_metrics(pooled["labels"], pooled["predictions"], pooled["probabilities"])["auc"]
    roc = {f"fold {i}": (a["labels"], a["probabilities"]) for i, a in enumerate(per_fold)}
    roc[f"pooled (AUC {_fmt(pooled_auc)})"] = (pooled["labels"], pooled["probabilities"])
    plot_roc(roc, cv_dir / FIGURES["roc"])
    matrices = {"pooled": confusion_counts(pooled["labels"], pooled["predictions"])}
    matrices.update({f"fold {i}": confusion_counts(a["labels"], a["predictions"]) for i, a in enumerate(per_fold)})
    plot_confusion(matrices, ["0", "1"], cv_dir / FIGURES["confusion"])
    curves = {f"fold {i}": (np.array([float(r["mean_gmacs"]) for r in f["curve"]]),
                            np.array([float(r["accuracy"]) for r in f["curve"]])) for i, f in enumerate(folds)}
    accuracy = binary_metrics(pooled["labels"], pooled["predictions"], pooled["probabilities"])["accuracy"]
    plot_accuracy_vs_gmacs(curves, {"reported operating point": (float(pooled["gmacs"].mean()), accuracy)},
                           cv_dir / FIGURES["accuracy_vs_gmacs"])
    plot_selected_slices(_selected_slice_panels(all_predictions, experiment), cv_dir / FIGURES["selected_slices"])

    entries = comparison(rows, load_baselines(cv_dir, n_folds))
    record_comparison(cv_dir, entries)
    markdown = (_markdown(experiment, rows, folds, len(pooled["labels"]), comparison_lines(entries))
                + "\n".join(triage_lines(all_predictions)))
    atomic_write_text(cv_dir / "report.md", markdown)
    atomic_write_text(cv_dir / "report.html", _html(markdown))
    return cv_dir / "report.md"
