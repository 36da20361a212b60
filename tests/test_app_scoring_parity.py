"""The review app scores a new scan through apps/scoring with the run's own clip spec: a run trained on
coronal slices with two neighbours per side gives the app and `adafocus score` identical results."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from _cv_fixtures import tiny_preset
from adafocus.apps.cli import main
from adafocus.apps.review.logic import score_new_scan
from adafocus.apps.runs.mri import train_on_manifest
from adafocus.core.run import load_run
from adafocus.datasets.mri.cohort import CohortConfig, write_oasis_cohort
from adafocus.datasets.mri.manifest import read_manifest, write_manifest
from adafocus.datasets.mri.preprocess import T1LinearConfig, run_preprocess

pytestmark = pytest.mark.slow


def test_app_and_cli_give_identical_rows_for_a_coronal_context_2_run(tmp_path):
    torch.manual_seed(0)
    csv_path = write_oasis_cohort(tmp_path / "raw", CohortConfig(n_participants=8, n_repeat_scans=0, spacing_mm=3.0))
    manifest = run_preprocess("oasis", tmp_path / "raw", csv_path, tmp_path / "cache", workers=2, progress=False,
                              config=T1LinearConfig(spacing_mm=4.0, registration_spacing_mm=4.0))
    rows = [r for r in read_manifest(manifest) if r.status == "ok"]
    held_out = rows[-1]
    train_manifest = write_manifest([r for r in rows if r.participant_id != held_out.participant_id],
                                    tmp_path / "cache" / "train.tsv")
    run = tmp_path / "run"
    train_on_manifest(train_manifest, tiny_preset(epochs=1), run, axis="coronal", context=2,
                      validation_fraction=0.35, device="cpu", progress=False, log=lambda m: None)
    card = load_run(run, device="cpu").card
    assert card.input["axis"] == "coronal" and card.input["context"] == 2

    raw = held_out.source_path
    assert main(["score", str(raw), "--model", str(run), "--out", str(tmp_path / "cli"), "--workers", "1",
                 "--quiet", "--device", "cpu"]) == 0
    with open(tmp_path / "cli" / "scores.csv", newline="") as handle:
        cli_row = next(csv.DictReader(handle))
    cli_record = json.loads((tmp_path / "cli" / "details.jsonl").read_text().splitlines()[0])

    app_record = score_new_scan(run, raw, tmp_path / "app")
    assert app_record["status"] == "ok" == cli_row["status"]
    assert app_record["label"] == cli_row["label"]
    assert app_record["probs"] == cli_record["probs"]
    assert app_record["exit_step"] == cli_record["exit_step"] and app_record["gmacs"] == cli_record["gmacs"]
    assert app_record["selected"] == cli_record["selected"]
    assert {s["axis"] for s in app_record["selected"]} == {"coronal"}
