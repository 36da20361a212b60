"""Exit thresholds for a compute budget, fitted on a run's OWN calibration split (`adafocus calibrate`).

Where the calibration split lives is recorded in the model card (adafocus.core.run): a video run's val split
(split.json, paths relative to the data folder), an MRI run's held-out participants of a manifest, an old
`cv` fold's validation participants, or the synthetic task's calibration split. When that data is not where
the card says (a moved folder), calibration refuses and names it; `--data` then gives its new place (the
same ids are looked up there; a different dataset is refused, never silently used). A run whose card does
not say where its calibration data lives (old checkpoints) needs `--data`; the synthetic task is used only
for synthetic models or `--data synthetic`.

Files: logits on the run's own split go to RUN/calibration.pt (the same data training fitted, so a refit for
any budget stays consistent); logits on data given with `--data` elsewhere go to
RUN/calibration-external.pt, leaving training's file alone. Thresholds go to RUN/exit_policies/budget-G.json.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adafocus.core.checkpoint import save_checkpoint
from adafocus.core.device import resolve_device, worker_processes
from adafocus.core.exits import ExitPolicy, exit_scores, solve_budget
from adafocus.core.io import atomic_write_json
from adafocus.core.run import CalibrationDataError, LoadedRun, load_run
from adafocus.core.train import collect_logits
from torch.utils.data import DataLoader, Dataset


# ------------------------------------------------------------------------------------ calibration data
def calibration_dataset(run: LoadedRun, data: str | None = None) -> tuple[Dataset, Callable, dict]:
    """(un-augmented dataset, collate function, calibration record) of the run's calibration split, or of
    the same ids found in `data` when given. CalibrationDataError when the data cannot be found."""
    card = run.card
    source = (card.calibration or {}).get("source")
    if data == "synthetic" or (data is None and source == "synthetic"):
        return _synthetic(run)
    if card.domain == "synthetic" and data is None:
        return _synthetic(run)
    if source is None and data is None:
        raise CalibrationDataError(f"{run.checkpoint}'s model card does not say where its calibration split "
                                   f"lives (an older checkpoint): pass --data with the data it was trained on")
    if card.domain == "video":
        from adafocus.apps.runs.video import video_calibration_set
        return video_calibration_set(run, data)
    if card.domain == "mri":
        from adafocus.apps.runs.mri import mri_calibration_set
        return mri_calibration_set(run, data)
    raise CalibrationDataError(f"--data {data}: a {card.domain} model calibrates on its own task")


def _synthetic(run: LoadedRun) -> tuple[Dataset, Callable, dict]:
    from adafocus.apps.runs.synthetic import synthetic_splits
    from adafocus.datasets.synthetic import collate

    if run.card.domain != "synthetic" and not (run.card.derived and run.card.calibration is None):
        raise CalibrationDataError(f"{run.checkpoint} is a {run.card.domain} model; the synthetic task cannot "
                                   f"calibrate it (drop --data synthetic)")
    return synthetic_splits(run.preset)["calibration"], collate, {"source": "synthetic", "subset": "calibration",
                                                                  "own": run.card.domain == "synthetic"}


# -------------------------------------------------------------------------------------------- the fit
def calibrate_run(model_arg: str | Path, budget: float, *, data: str | None = None, criterion: str = "entropy",
                  device: str = "auto", batch_size: int = 32, workers: int = 0) -> tuple[ExitPolicy, Path]:
    """Fit thresholds for `budget` on the run's calibration split; returns (policy, the policy file)."""
    run = load_run(model_arg, device=device)
    dataset, collate, record = calibration_dataset(run, data)
    if len(dataset) == 0:
        raise CalibrationDataError(f"the calibration split of {run.folder.path} is empty")
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate,
                        **worker_processes(workers, type(dataset)))
    logits, labels = collect_logits(run.model, loader, resolve_device(device))
    costs = run.model.exit_costs()
    policy = solve_budget(exit_scores(logits, criterion), costs, budget, criterion=criterion)
    own = data is None or record.get("own", False)
    target = run.folder.calibration if own else run.folder.external_calibration
    save_checkpoint(target, model_state={}, config={"criterion": criterion, "checkpoint": run.checkpoint.name},
                    logits=logits, labels=labels, exit_costs=costs,
                    source={k: v for k, v in record.items() if k != "ids"})
    policy_file = run.folder.exit_policy(budget)
    policy_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(policy_file, policy.to_dict())
    return policy, policy_file

