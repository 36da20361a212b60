"""Participant-level folds (never split a participant, stratified, persisted) and the leakage guard."""
from __future__ import annotations

import logging
from collections import Counter

import pytest
from adafocus.datasets.splits import (
    DataLeakageError,
    Scan,
    check_no_leakage,
    load_or_make_folds,
    make_folds,
    read_folds,
    write_training_participants,
)
from adafocus.reports.tables import read_tsv


def cohort(n_participants: int = 30, n_patients: int = 12, repeats: int = 8) -> list[Scan]:
    """Scans of an unbalanced cohort: the first `repeats` participants have two sessions."""
    scans = []
    for k in range(n_participants):
        label = int(k % 5 < 2) if k < 25 else int(k < 27)  # deterministic mix, 12 positives in 30
        for session in (["ses-M000", "ses-M012"] if k < repeats else ["ses-M000"]):
            scans.append(Scan(f"sub-{k:02d}", session, label))
    assert sum(1 for s in scans if s.session_id == "ses-M000" and s.label == 1) == n_patients
    return scans


def test_folds_partition_participants_and_never_split_one():
    scans = cohort()
    folds = make_folds(scans, 5, seed=3)
    participants = {s.participant_id for s in scans}
    tests = [set(f.test) for f in folds]
    assert set().union(*tests) == participants
    assert sum(len(t) for t in tests) == len(participants)  # each participant tested exactly once
    for fold in folds:
        train, val, test = set(fold.train), set(fold.validation), set(fold.test)
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == participants


def test_folds_are_stratified_and_validation_sees_both_classes():
    scans = cohort()
    labels = {s.participant_id: s.label for s in scans}
    folds = make_folds(scans, 5, seed=0)
    for fold in folds:
        positives = sum(labels[p] for p in fold.test)
        assert abs(positives - 12 / 5) <= 1, (fold.index, positives)
        assert {labels[p] for p in fold.validation} == {0, 1}


def test_saved_split_tsv_keeps_sessions_together_and_reloads(tmp_path):
    scans = cohort()
    folds = load_or_make_folds(scans, tmp_path / "splits", 5, seed=1)
    for fold in folds:
        subset_of = {}
        for row in read_tsv(tmp_path / "splits" / f"fold-{fold.index}.tsv"):
            subset_of.setdefault(row["participant_id"], set()).add(row["subset"])
        assert all(len(subsets) == 1 for subsets in subset_of.values())
        assert Counter(next(iter(s)) for s in subset_of.values())["test"] == len(fold.test)
    assert read_folds(tmp_path / "splits") == folds
    assert load_or_make_folds(scans, tmp_path / "splits", 5, seed=1) == folds


def test_saved_split_is_not_reused_for_other_settings_or_participants(tmp_path):
    scans = cohort()
    load_or_make_folds(scans, tmp_path, 5, seed=1)
    with pytest.raises(ValueError, match="made with"):
        load_or_make_folds(scans, tmp_path, 4, seed=1)
    with pytest.raises(ValueError, match="other participants"):
        load_or_make_folds(scans[:-1], tmp_path, 5, seed=1)


def test_too_few_participants_per_class_is_a_clear_error():
    scans = [Scan(f"p{k}", "ses-1", int(k < 2)) for k in range(10)]
    with pytest.raises(ValueError, match="at least 5 participants per class"):
        make_folds(scans, 5)


def test_leakage_guard_refuses_training_participants(tmp_path, caplog):
    run = tmp_path / "run"
    write_training_participants(run, ["sub-01", "sub-02", "sub-03"])
    checkpoint = run / "best.pt"
    check_no_leakage(checkpoint, ["sub-09", "sub-10"])  # held-out participants: fine
    with pytest.raises(DataLeakageError, match=r"1 participant\(s\).*sub-02.*allow_leakage"):
        check_no_leakage(checkpoint, ["sub-02", "sub-10"])
    with caplog.at_level(logging.WARNING):
        check_no_leakage(checkpoint, ["sub-02"], allow_leakage=True)
    assert "overridden" in caplog.text


def test_leakage_guard_needs_the_training_record(tmp_path):
    with pytest.raises(FileNotFoundError, match="training_participants.tsv"):
        check_no_leakage(tmp_path / "best.pt", ["sub-01"])
