"""Participant-level splits for cross-validation, persisted as TSVs, and the training-data leakage guard.

Protocol (Wen et al. 2020, ClinicaDL `tsvtools kfold`): every scan of a participant lands on the same side
of every split. The outer k folds come from scikit-learn's `StratifiedGroupKFold` over scan rows grouped by
participant and stratified by label; inside each fold's training participants an inner validation split
(also by participant, stratified) is held out for model selection and exit-threshold calibration, so the
test fold is touched only once, at the end.

Files (`<folder>` is usually `CV_DIR/splits`):
    fold-<i>.tsv   one row per scan: participant_id, session_id, label, subset (train | validation | test)
    splits.json    n_folds, seed, validation_fraction (so a later call can check it reuses the same split)

Leakage guard: a model's run folder holds `training_participants.tsv` (every participant whose scans were
used for training or model selection). `check_no_leakage` refuses to score any of them unless the caller
overrides it explicitly.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from adafocus.core.io import atomic_write_json, atomic_write_text
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

log = logging.getLogger(__name__)

SUBSETS = ("train", "validation", "test")
SPLITS_JSON = "splits.json"
TRAINING_PARTICIPANTS_FILE = "training_participants.tsv"


@dataclass(frozen=True)
class Scan:
    """The split-relevant part of a manifest row."""

    participant_id: str
    session_id: str
    label: int


@dataclass(frozen=True)
class Fold:
    """One outer fold: disjoint participant sets (sorted tuples of participant ids)."""

    index: int
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    def subset_of(self, participant_id: str) -> str:
        for name in SUBSETS:
            if participant_id in getattr(self, name):
                return name
        raise KeyError(f"participant {participant_id!r} is not in fold {self.index}")

    @property
    def seen_in_training(self) -> tuple[str, ...]:
        """Participants the fold's model was trained or selected on (train + validation)."""
        return tuple(sorted(self.train + self.validation))


class DataLeakageError(ValueError):
    """Raised when asked to score participants that were in a model's training data."""


def as_scans(rows: Iterable) -> list[Scan]:
    """Manifest rows (or anything with participant_id, session_id, label) -> `Scan`s."""
    return [Scan(str(r.participant_id), str(r.session_id), int(r.label)) for r in rows]


def participant_labels(scans: Sequence[Scan]) -> dict[str, int]:
    """Label of each participant at its first (baseline) session, in session order.

    A participant whose sessions carry different labels (e.g. a converter) is stratified by the baseline
    label, as ClinicaDL's `extract_baseline` does."""
    labels: dict[str, int] = {}
    for scan in sorted(scans, key=lambda s: (s.participant_id, s.session_id)):
        labels.setdefault(scan.participant_id, scan.label)
    return labels


def _check_enough_per_class(labels: dict[str, int], n_folds: int) -> None:
    counts: dict[int, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    if len(counts) < 2:
        raise ValueError(f"cross-validation needs at least two classes; every participant has label {set(counts)}")
    short = {label: n for label, n in counts.items() if n < n_folds}
    if short:
        raise ValueError(f"{n_folds}-fold CV needs at least {n_folds} participants per class; "
                         f"participants per label: {dict(sorted(counts.items()))}")


def outer_test_folds(scans: Sequence[Scan], n_folds: int, *, seed: int = 0) -> list[tuple[str, ...]]:
    """Participant ids of each fold's test set: `StratifiedGroupKFold` on scans grouped by participant.

    Returns n_folds disjoint sorted tuples whose union is every participant."""
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    labels = participant_labels(scans)
    _check_enough_per_class(labels, n_folds)
    ordered = sorted(scans, key=lambda s: (s.participant_id, s.session_id))
    y = np.array([labels[s.participant_id] for s in ordered])  # stratify by the participant's label
    groups = np.array([s.participant_id for s in ordered])
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [tuple(sorted(set(groups[test]))) for _, test in splitter.split(np.zeros(len(y)), y, groups)]


def inner_validation_split(participants: Sequence[str], labels: dict[str, int], fraction: float, *,
                           seed: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, validation) participant ids: a stratified `fraction` of `participants` held out.

    At least one validation participant per class (so validation accuracy and calibration see both)."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    ids = sorted(participants)
    y = [labels[p] for p in ids]
    n_classes = len(set(y))
    n_val = max(n_classes, round(fraction * len(ids)))
    if len(ids) - n_val < n_classes:
        raise ValueError(f"{len(ids)} training participants are too few for an inner validation split")
    train, val = train_test_split(ids, test_size=n_val, stratify=y, random_state=seed)
    return tuple(sorted(train)), tuple(sorted(val))


def holdout_split(scans: Sequence[Scan], fraction: float, *, seed: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, held-out) participant ids of a deployable model: a stratified `fraction` of the participants
    held out (at least one per class) for model selection and exit calibration; every scan of a participant
    lands on the same side."""
    labels = participant_labels(scans)
    train, held_out = inner_validation_split(sorted(labels), labels, fraction, seed=seed)
    if set(train) & set(held_out):
        raise DataLeakageError(f"participants on both sides of the held-out split: {sorted(set(train) & set(held_out))}")
    return train, held_out


def make_folds(scans: Sequence[Scan], n_folds: int, *, seed: int = 0,
               validation_fraction: float = 0.2) -> list[Fold]:
    """Outer folds plus each fold's inner validation split (all at participant level)."""
    labels = participant_labels(scans)
    folds = []
    for index, test in enumerate(outer_test_folds(scans, n_folds, seed=seed)):
        rest = sorted(set(labels) - set(test))
        train, val = inner_validation_split(rest, labels, validation_fraction, seed=seed + index)
        folds.append(Fold(index, train, val, test))
    return folds


def _tsv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_folds(folds: Sequence[Fold], scans: Sequence[Scan], folder: str | Path, *, seed: int,
                validation_fraction: float) -> None:
    """Write `fold-<i>.tsv` (one row per scan) and `splits.json` into `folder`, atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ordered = sorted(scans, key=lambda s: (s.participant_id, s.session_id))
    for fold in folds:
        rows = [(s.participant_id, s.session_id, s.label, fold.subset_of(s.participant_id)) for s in ordered]
        atomic_write_text(folder / f"fold-{fold.index}.tsv",
                          _tsv_text(("participant_id", "session_id", "label", "subset"), rows))
    atomic_write_json(folder / SPLITS_JSON, {"n_folds": len(folds), "seed": seed,
                                             "validation_fraction": validation_fraction})


def read_folds(folder: str | Path) -> list[Fold]:
    """Read the folds written by `write_folds`."""
    folder = Path(folder)
    meta = json.loads((folder / SPLITS_JSON).read_text(encoding="utf-8"))
    folds = []
    for index in range(meta["n_folds"]):
        members: dict[str, set[str]] = {name: set() for name in SUBSETS}
        with (folder / f"fold-{index}.tsv").open(newline="", encoding="utf-8") as handle:
            for rec in csv.DictReader(handle, delimiter="\t"):
                members[rec["subset"]].add(rec["participant_id"])
        folds.append(Fold(index, *(tuple(sorted(members[name])) for name in SUBSETS)))
    return folds


def load_or_make_folds(scans: Sequence[Scan], folder: str | Path, n_folds: int, *, seed: int = 0,
                       validation_fraction: float = 0.2) -> list[Fold]:
    """The folds saved in `folder` if present (checked against these scans and settings), else new ones.

    Raises ValueError when the saved split was made for other participants or settings: reusing it would
    silently mix two experiments."""
    folder = Path(folder)
    if (folder / SPLITS_JSON).exists():
        meta = json.loads((folder / SPLITS_JSON).read_text(encoding="utf-8"))
        wanted = {"n_folds": n_folds, "seed": seed, "validation_fraction": validation_fraction}
        if meta != wanted:
            raise ValueError(f"{folder} holds a split made with {meta}, not {wanted}; use another output folder")
        folds = read_folds(folder)
        saved = {p for f in folds for p in f.train + f.validation + f.test}
        current = {s.participant_id for s in scans}
        if saved != current:
            raise ValueError(f"{folder} was made for other participants ({len(saved ^ current)} differ); "
                             f"use another output folder")
        return folds
    folds = make_folds(scans, n_folds, seed=seed, validation_fraction=validation_fraction)
    write_folds(folds, scans, folder, seed=seed, validation_fraction=validation_fraction)
    return folds


# --------------------------------------------------------------------------------------- leakage guard
def training_participants_path(model_path: str | Path) -> Path:
    """Where a model's training participants are recorded: its run folder (a checkpoint's parent)."""
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    return folder / TRAINING_PARTICIPANTS_FILE


def write_training_participants(run_dir: str | Path, participants: Iterable[str]) -> Path:
    """Record every participant a model was trained or selected on (one id per line, with a header)."""
    path = Path(run_dir) / TRAINING_PARTICIPANTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, _tsv_text(("participant_id",), ([p] for p in sorted(set(participants)))))
    return path


def read_training_participants(model_path: str | Path) -> set[str]:
    """Participants recorded next to a checkpoint (or in a run folder); FileNotFoundError if none."""
    path = training_participants_path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: cannot tell which participants this model was trained on "
                                f"(the leakage check needs it)")
    with path.open(newline="", encoding="utf-8") as handle:
        return {rec["participant_id"] for rec in csv.DictReader(handle, delimiter="\t")}


def check_no_leakage(model_path: str | Path, participants: Iterable[str], *, allow_leakage: bool = False) -> None:
    """Refuse to score participants that the model saw in training or model selection.

    Raises DataLeakageError naming the overlap, unless `allow_leakage` (then a warning is logged)."""
    overlap = sorted(read_training_participants(model_path) & set(participants))
    if not overlap:
        return
    shown = ", ".join(overlap[:5]) + (f" and {len(overlap) - 5} more" if len(overlap) > 5 else "")
    message = (f"{len(overlap)} participant(s) to score were in this model's training data ({shown}); "
               f"scores on them would be optimistic (data leakage)")
    if not allow_leakage:
        raise DataLeakageError(message + ". Score held-out participants only, or override explicitly "
                                         "(allow_leakage=True / --allow-leakage) if you know why.")
    log.warning("%s; scoring anyway because the leakage check was overridden", message)
