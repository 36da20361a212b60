"""A deployable MRI model from a preprocessed manifest: `adafocus train --data MANIFEST.tsv --preset cpu-mri`.

The manifest's usable rows (status ok) are split once, by participant and stratified by label, into train
and a held-out split (RUN/split.tsv). The held-out participants select the model (best.pt) and calibrate
its exits; RUN/training_participants.tsv lists everyone trained or selected on, so scoring refuses them
(the leakage guard of datasets.splits). The checkpoint's model card records the input spec (slice axis,
slice count, context, discarded borders, frame size and the cache's t1-linear settings), the class names
(the manifest's diagnoses) and the calibration split (the manifest and the held-out ids), so `calibrate`,
`score` and the review app need nothing else. `cv` folds write the same kind of run folder.
"""
from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from adafocus.core.config import Preset, with_input_channels
from adafocus.core.io import atomic_write_text
from adafocus.core.run import (
    CalibrationDataError,
    LoadedRun,
    ModelCard,
    RunFolder,
    load_run,
    make_card,
    missing_data_message,
)
from adafocus.core.train import calibrate, train
from adafocus.datasets.mri.dataset import (
    ClipSpec,
    MRISliceDataset,
    clip_spec_of,
    collate_scans,
    is_usable,
    training_augmentation,
)
from adafocus.datasets.mri.manifest import (
    ManifestRow,
    manifest_rows_for_use,
    summarise_left_out,
)
from adafocus.datasets.mri.preprocess import TEMPLATE_SPACE, read_t1_linear_config
from adafocus.datasets.splits import as_scans, holdout_split, write_training_participants
from torch.utils.data import DataLoader, Dataset

DEFAULT_VALIDATION_FRACTION = 0.2


def usable_rows(manifest: str | Path, *, include_qc_failed: bool = False,
                log: Callable[[str], None] | None = None) -> list[ManifestRow]:
    """Rows of a manifest that can be used; see `rows_and_left_out`."""
    return rows_and_left_out(manifest, include_qc_failed=include_qc_failed, log=log)[0]


def rows_and_left_out(manifest: str | Path, *, include_qc_failed: bool = False,
                      log: Callable[[str], None] | None = None
                      ) -> tuple[list[ManifestRow], list[tuple[ManifestRow, str]]]:
    """(usable rows, [(row, why it is left out)]): preprocessed, file present, registration QC not failed unless
    `include_qc_failed`; what is left out is summarised through `log`. ValueError if none is usable."""
    rows, left_out = manifest_rows_for_use(manifest, include_qc_failed=include_qc_failed)
    rows = [r for r in rows if is_usable(r)]
    if not rows:
        raise ValueError(f"{manifest} has no preprocessed scans (status ok); run `adafocus preprocess` first")
    if log is not None and left_out:
        log(f"{summarise_left_out(left_out)} (see the manifest's status / qc_reason columns"
            + ("" if include_qc_failed else "; --include-qc-failed keeps QC-failed scans") + ")")
    return rows, left_out


def class_names_of(rows: Sequence[ManifestRow], num_classes: int) -> list[str]:
    """The diagnosis of each label (label order), e.g. ["CN", "AD"]; class_<i> where a label has no row."""
    names = {r.label: r.diagnosis for r in rows if r.diagnosis}
    return [names.get(i, f"class_{i}") for i in range(num_classes)]


def mri_input_spec(spec: ClipSpec, manifest: str | Path) -> dict:
    """The card's input spec: the clip spec plus the t1-linear settings and template of the manifest's cache."""
    t1 = read_t1_linear_config(Path(manifest).parent)
    return {**spec.to_dict(), "template": TEMPLATE_SPACE, "spacing_mm": t1.get("spacing_mm"), "t1_linear": t1}


def mri_card(preset: Preset, rows: Sequence[ManifestRow], spec: ClipSpec, manifest: str | Path,
             calibration_rows: Sequence[ManifestRow]) -> ModelCard:
    calibration = {"source": "manifest", "data": str(Path(manifest).absolute()), "subset": "validation",
                   "ids": [[r.participant_id, r.session_id] for r in calibration_rows]}
    return make_card("mri", preset.to_dict(), class_names_of(rows, preset.model.num_classes),
                     mri_input_spec(spec, manifest), calibration)


def write_participant_split(run: RunFolder, rows: Sequence[ManifestRow], held_out: set[str]) -> None:
    lines = ["participant_id\tsession_id\tlabel\tsubset"]
    lines += [f"{r.participant_id}\t{r.session_id}\t{r.label}\t{'validation' if r.participant_id in held_out else 'train'}"
              for r in sorted(rows, key=lambda r: (r.participant_id, r.session_id))]
    atomic_write_text(run.participant_split, "\n".join(lines) + "\n")


def read_participant_split(run: RunFolder) -> dict[str, set[str]]:
    with run.participant_split.open(newline="", encoding="utf-8") as handle:
        subsets: dict[str, set[str]] = {"train": set(), "validation": set()}
        for record in csv.DictReader(handle, delimiter="\t"):
            subsets[record["subset"]].add(record["participant_id"])
    return subsets


def train_on_manifest(manifest: str | Path, preset: Preset, out_dir: str | Path, *, axis: str = "sagittal",
                      context: int = 1, discard_border: float = 0.15,
                      validation_fraction: float = DEFAULT_VALIDATION_FRACTION, device: str = "auto",
                      resume: bool = True, progress: bool = True, log: Callable[[str], None] = print,
                      include_qc_failed: bool = False) -> dict:
    """Train on the manifest's usable rows with a participant-level held-out split; calibrate the default budget.
    Scans whose registration failed QC stay out unless `include_qc_failed` (the log says what was left out)."""
    preset = dataclasses.replace(preset, model=with_input_channels(preset.model, 2 * context + 1))
    rows = usable_rows(manifest, include_qc_failed=include_qc_failed, log=log)
    run = RunFolder(out_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    if run.participant_split.is_file():  # resuming: keep the split the weights were trained on
        held_out = read_participant_split(run)["validation"]
    else:
        held_out = set(holdout_split(as_scans(rows), validation_fraction, seed=preset.train.seed)[1])
        write_participant_split(run, rows, held_out)
    train_rows = [r for r in rows if r.participant_id not in held_out]
    val_rows = [r for r in rows if r.participant_id in held_out]
    if {r.participant_id for r in train_rows} & {r.participant_id for r in val_rows}:
        raise ValueError("a participant is on both sides of the held-out split")  # guarded by construction
    write_training_participants(run.path, [r.participant_id for r in rows])  # before any weight exists
    spec = ClipSpec.for_preset(preset, axis=axis, discard_border=discard_border, context=context)
    card = mri_card(preset, rows, spec, manifest, val_rows)
    log(f"{len(train_rows)} training scans ({len({r.participant_id for r in train_rows})} participants), "
        f"{len(val_rows)} held-out scans ({len(held_out)} participants) for model selection and calibration")
    val_set = MRISliceDataset(val_rows, spec)
    train_set = MRISliceDataset(train_rows, spec, augment=training_augmentation(preset.train.augmentation_copies))
    summary = train(preset, train_set, val_set, run.path, device=device,
                    resume=resume, collate_fn=collate_scans, progress=progress, log=log, card=card)
    model = load_run(run.best, device=device).model
    costs = model.exit_costs()
    budget = 0.5 * (costs[0] + costs[-1])
    calibrate(model, DataLoader(val_set, batch_size=16, collate_fn=collate_scans), budget, device=device,
              out_dir=run.path)
    log(f"calibration logits of {len(val_rows)} held-out scans -> {run.calibration}; thresholds for "
        f"{budget:.4g} GMACs/scan -> {run.exit_policy()}")
    return {**summary, "calibration": str(run.calibration), "exit_policy": str(run.exit_policy()),
            "held_out_participants": len(held_out)}


def mri_calibration_set(run: LoadedRun, data: str | None) -> tuple[Dataset, object, dict]:
    """The held-out scans of an MRI run (its card's manifest, or `data` where it moved): the same ids."""

    record = dict(run.card.calibration or {})
    manifest = data or record.get("data")
    if manifest is None or not Path(manifest).is_file():
        raise CalibrationDataError(missing_data_message(run, manifest, "a scan manifest") if manifest else
                                   f"{run.checkpoint}'s card does not record its manifest; pass --data MANIFEST")
    ids = {tuple(i) for i in record.get("ids", [])}
    if record.get("source") == "cv-fold":
        from adafocus.datasets.splits import read_folds

        fold = read_folds(Path(record["cv_dir"]) / "splits")[record["fold"]]
        wanted = set(fold.validation)
        rows = [r for r in usable_rows(manifest) if r.participant_id in wanted]
    else:
        rows = [r for r in usable_rows(manifest) if (r.participant_id, r.session_id) in ids]
        if len(rows) < len(ids):
            raise CalibrationDataError(f"{manifest} has {len(rows)} of the {len(ids)} held-out scans of "
                                       f"{run.folder.path}; pass --data with the manifest it was trained on")
    dataset = MRISliceDataset(rows, clip_spec_of(run.card))
    return dataset, collate_scans, {**record, "data": str(Path(manifest).absolute()), "own": True}
