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

import math
from collections.abc import Callable
from pathlib import Path

from adafocus.core.checkpoint import load_checkpoint, save_checkpoint
from adafocus.core.exits import ExitPolicy, exit_scores, solve_budget
from adafocus.core.io import atomic_write_json
from adafocus.core.model import UniAdaFocus
from adafocus.core.run import LoadedRun, RunFolder, load_run
from adafocus.core.train import collect_logits, load_exit_policy, resolve_device
from torch.utils.data import DataLoader, Dataset

EXTERNAL_CALIBRATION = "calibration-external.pt"


class CalibrationDataError(FileNotFoundError):
    """The run's calibration data cannot be found or used; the message says what to pass."""


# ---------------------------------------------------------------------------------------------- budget
def exit_policy_for_budget(checkpoint: str | Path | RunFolder, budget: float, model: UniAdaFocus) -> ExitPolicy:
    """Thresholds meeting `budget` GMACs per input, in this order: the policy `calibrate` fitted for exactly
    this budget; a refit on the run's calibration logits (calibration.pt); exit_policy.json if fitted for it."""
    folder = checkpoint if isinstance(checkpoint, RunFolder) else RunFolder.locate(checkpoint)
    fitted = folder.exit_policy(budget)
    if fitted.is_file():
        return _checked(load_exit_policy(fitted), model, fitted)
    if folder.calibration.is_file():
        state = load_checkpoint(folder.calibration)
        logits, criterion = state["logits"], state["config"]["criterion"]
        if logits.ndim != 3 or logits.shape[1] != model.config.num_exits:
            raise ValueError(f"{folder.calibration} has logits of shape {tuple(logits.shape)}, not for this "
                             f"model's {model.config.num_exits} exits; re-run `adafocus calibrate`")
        return solve_budget(exit_scores(logits, criterion), model.exit_costs(), budget, criterion=criterion)
    default = folder.exit_policy()
    if default.is_file():
        policy = load_exit_policy(default)
        if not math.isclose(policy.budget, budget, rel_tol=1e-3):
            raise ValueError(f"{default} is fitted for {policy.budget:.6g} GMACs and there is no "
                             f"{folder.calibration.name} to refit it for {budget:.6g}; run "
                             f"`adafocus calibrate --model {folder.path} --budget {budget:g}`")
        return _checked(policy, model, default)
    raise FileNotFoundError(f"--budget needs {folder.calibration.name} or fitted thresholds in {folder.path} "
                            f"(run `adafocus calibrate --model {folder.path} --budget {budget:g}`)")


def _checked(policy: ExitPolicy, model: UniAdaFocus, path: Path) -> ExitPolicy:
    if policy.num_exits != model.config.num_exits:
        raise ValueError(f"{path} has {policy.num_exits} exits, the model {model.config.num_exits}; re-calibrate")
    return policy


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
        from adafocus.apps.video_runs import video_calibration_set
        return video_calibration_set(run, data)
    if card.domain == "mri":
        from adafocus.apps.mri_runs import mri_calibration_set
        return mri_calibration_set(run, data)
    raise CalibrationDataError(f"--data {data}: a {card.domain} model calibrates on its own task")


def _synthetic(run: LoadedRun) -> tuple[Dataset, Callable, dict]:
    from adafocus.apps.synthetic_runs import synthetic_splits
    from adafocus.datasets.synthetic import collate

    if run.card.domain != "synthetic" and not (run.card.derived and run.card.calibration is None):
        raise CalibrationDataError(f"{run.checkpoint} is a {run.card.domain} model; the synthetic task cannot "
                                   f"calibrate it (drop --data synthetic)")
    return synthetic_splits(run.preset)["calibration"], collate, {"source": "synthetic", "subset": "calibration",
                                                                  "own": run.card.domain == "synthetic"}


def missing_data_message(run: LoadedRun, where: str | None, what: str) -> str:
    return (f"the calibration split of {run.folder.path} ({what}) was at {where}, which is not there any more; "
            f"pass --data with its new location")


# -------------------------------------------------------------------------------------------- the fit
def calibrate_run(model_arg: str | Path, budget: float, *, data: str | None = None, criterion: str = "entropy",
                  device: str = "auto", batch_size: int = 32, workers: int = 0) -> tuple[ExitPolicy, Path]:
    """Fit thresholds for `budget` on the run's calibration split; returns (policy, the policy file)."""
    run = load_run(model_arg, device=device)
    dataset, collate, record = calibration_dataset(run, data)
    if len(dataset) == 0:
        raise CalibrationDataError(f"the calibration split of {run.folder.path} is empty")
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers)
    logits, labels = collect_logits(run.model, loader, resolve_device(device))
    costs = run.model.exit_costs()
    policy = solve_budget(exit_scores(logits, criterion), costs, budget, criterion=criterion)
    own = data is None or record.get("own", False)
    target = run.folder.calibration if own else run.folder.path / EXTERNAL_CALIBRATION
    save_checkpoint(target, model_state={}, config={"criterion": criterion, "checkpoint": run.checkpoint.name},
                    logits=logits, labels=labels, exit_costs=costs,
                    source={k: v for k, v in record.items() if k != "ids"})
    policy_file = run.folder.exit_policy(budget)
    policy_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(policy_file, policy.to_dict())
    return policy, policy_file

