"""The run folder: the one place that knows which files a trained model's folder holds, and its model card.

A *run folder* is what users move between commands and machines (`train --out RUN`, `calibrate --model RUN`,
`score --model RUN`, `cv` folds, `import-official`, the review app). Every command reads and writes it through
this module; no other module spells a run file's name.

    RUN/
      best.pt                   the model selected on the held-out split (weights + config + model card)
      last.pt                   resumable training state (model, optimizer, epoch)
      config.json               the preset as trained (human-readable copy)
      model_card.json           the model card (human-readable copy; the checkpoint's copy is authoritative)
      log.tsv                   one row per training epoch
      classes.json              class names in label order
      split.json                video runs: the stratified train/val/test split (paths relative to the data)
      split.tsv                 MRI runs: participant-level split (participant_id, session_id, label, subset)
      training_participants.tsv MRI runs: everyone trained or selected on (the leakage guard)
      calibration.pt            all exits' logits on the run's own calibration split (refit any budget)
      exit_policy.json          thresholds for the default budget (written by train)
      exit_policies/budget-<G>.json   thresholds fitted by `adafocus calibrate --budget G`
      evaluation.json           test-split evaluation written by train, where the data has a test split
      engine_agreement.json     CPU engine precisions measured against torch fp32 on the calibration split
                                (`--precision auto`, apps/runs/agreement.py), keyed by precision, engine
                                version, CPU flags and checkpoint digest (core.engine.agreement_key)

API
    folder = RunFolder(path)                 # any folder (need not exist yet); properties give file paths:
    folder.best, .last, .config, .card_file, .log, .classes, .split, .participant_split,
    folder.training_participants, .calibration, .evaluation, .exit_policy(budget=None), .exit_policies(),
    folder.engine_agreement                  # + .engine_agreements() / .record_engine_agreement(key, entry)
    folder.checkpoint_digest()               # sha256 of the chosen checkpoint's content (first 16 hex digits)
    folder = RunFolder.locate(model_arg)     # a user's --model: RUN/, RUN/best.pt or RUN/last.pt; anything
                                             # else (RUN/calibration.pt, other.pt, a missing path) raises
                                             # RunFolderError with one line saying what to pass instead
    folder.checkpoint                        # the checkpoint locate() chose (best.pt for a folder)
    card = folder.read_card(state)           # the ModelCard of a loaded checkpoint dict (load_checkpoint);
                                             # old checkpoints without one get a card derived from the folder
    run = load_run(model_arg, device="cpu")  # LoadedRun(model, preset, card, folder, checkpoint) in eval mode

ModelCard (plain data, saved in every checkpoint under the key "card", see `checkpoint_extra`):
    domain          "video" | "mri" | "synthetic"
    class_names     ["NonViolence", "Violence"], ["CN", "AD"], ...
    input           what the model takes, so nothing guesses it from a preset name:
                      video:     {"num_candidates", "frame_size", "glance_size", "sampling": "segments"}
                      mri:       {"axis", "num_slices", "context", "discard_border", "size",
                                  "template": "MNI152NLin2009aSym", "spacing_mm", "t1_linear": {T1LinearConfig}}
                      synthetic: {"num_candidates", "frame_size", "glance_size", "task": {...}}
    normalisation   {"mean": [...], "std": [...]} applied inside the model to clips in [0, 1]
    calibration     where the calibration split lives, or None when unknown:
                      {"source": "video-split", "data": DATA_ROOT, "kind": "rlvs", "subset": "val", "ids": [...]}
                      {"source": "manifest", "data": MANIFEST, "subset": "validation", "ids": [[pid, sid], ...]}
                      {"source": "cv-fold", "data": MANIFEST, "cv_dir": DIR, "fold": i}   (derived, old cv folds)
                      {"source": "synthetic", "subset": "calibration"}
    derived         True when the card was rebuilt from an old run folder rather than read from the checkpoint

Old checkpoints (written before model cards) still load: the card is derived from the files beside them
(classes.json + split.json: a video run; training_participants.tsv inside an `adafocus cv` folder: an MRI
fold; nothing: taken as a video model, the only kind the old `score` read, with an unknown calibration
source, so `calibrate` then asks for `--data`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adafocus.core.checkpoint import CheckpointError, load_checkpoint
from adafocus.core.config import Preset
from adafocus.core.device import resolve_device
from adafocus.core.exits import ExitPolicy, exit_scores, solve_budget
from adafocus.core.model import UniAdaFocus

BEST_FILE = "best.pt"
LAST_FILE = "last.pt"
CONFIG_FILE = "config.json"
CARD_FILE = "model_card.json"
LOG_FILE = "log.tsv"
CLASSES_FILE = "classes.json"
SPLIT_FILE = "split.json"
PARTICIPANT_SPLIT_FILE = "split.tsv"
TRAINING_PARTICIPANTS_FILE = "training_participants.tsv"
CALIBRATION_FILE = "calibration.pt"
EXTERNAL_CALIBRATION_FILE = "calibration-external.pt"  # logits on data given with `calibrate --data`
EXIT_POLICY_FILE = "exit_policy.json"
EXIT_POLICY_DIR = "exit_policies"
EVALUATION_FILE = "evaluation.json"
ENGINE_AGREEMENT_FILE = "engine_agreement.json"
CV_FILE = "cv.json"  # an `adafocus cv` output folder (parent of its fold run folders)
FINAL_FILE = "final.pt"  # AdaFocus V1 after its last stage (core.adafocus_v1)
MODEL_FILES = (BEST_FILE, LAST_FILE, FINAL_FILE)
DOMAINS = ("video", "mri", "synthetic")
CARD_KEY = "card"
CARD_VERSION = 1


class RunFolderError(CheckpointError):
    """A path is not a usable run folder / model; the message (one line) says what to pass instead."""


class CalibrationDataError(FileNotFoundError):
    """The run's calibration data cannot be found or used; the message says what to pass."""


# ------------------------------------------------------------------------------------------------ card
@dataclass
class ModelCard:
    """What a trained model takes and says: see the module docstring for the fields."""

    domain: str
    class_names: list[str]
    input: dict[str, Any]
    normalisation: dict[str, list[float]]
    calibration: dict[str, Any] | None = None
    derived: bool = False
    version: int = CARD_VERSION

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise RunFolderError(f"model card domain {self.domain!r}; expected one of {', '.join(DOMAINS)}")
        if not self.class_names or not all(isinstance(n, str) for n in self.class_names):
            raise RunFolderError("model card needs the class names (a list of strings)")
        self.class_names = list(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict):
            raise RunFolderError(f"model card is a {type(data).__name__}, not a mapping")
        if int(data.get("version", 0)) > CARD_VERSION:
            raise RunFolderError(f"model card version {data.get('version')} is newer than this adafocus reads "
                                 f"({CARD_VERSION}); upgrade adafocus")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted({"domain", "class_names", "input", "normalisation"} - set(data))
        if missing:
            raise RunFolderError(f"model card lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def with_calibration(self, calibration: dict[str, Any] | None) -> ModelCard:
        return dataclasses.replace(self, calibration=calibration)


def normalisation_of(model_config: dict[str, Any]) -> dict[str, list[float]]:
    return {"mean": [float(v) for v in model_config.get("normalize_mean", (0.485, 0.456, 0.406))],
            "std": [float(v) for v in model_config.get("normalize_std", (0.229, 0.224, 0.225))]}


def frames_input(model_config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The input spec of a frame model (video or synthetic) from its model config."""
    return {"num_candidates": int(model_config["num_candidates"]), "frame_size": int(model_config["frame_size"]),
            "glance_size": model_config.get("glance_size"), "sampling": "segments", **extra}


def make_card(domain: str, config: dict[str, Any], class_names: list[str], input_spec: dict[str, Any] | None = None,
              calibration: dict[str, Any] | None = None) -> ModelCard:
    """A card for a model trained now; `config` is `Preset.to_dict()`. Video/synthetic input defaults to the
    model config's frames; MRI needs `input_spec` (the clip spec and t1-linear settings)."""
    model_config = config["model"]
    if input_spec is None:
        if domain == "mri":
            raise ValueError("an MRI model card needs its input spec (axis, slices, context, t1-linear settings)")
        input_spec = frames_input(model_config)
    if len(class_names) != int(model_config["num_classes"]):
        raise ValueError(f"{len(class_names)} class names for a model with {model_config['num_classes']} outputs")
    return ModelCard(domain, list(class_names), dict(input_spec), normalisation_of(model_config), calibration)


def class_names_from_text(text: str) -> list[str]:
    """Class names from a JSON list or from lines of text, one class per line; a leading index, as in the
    authors' ``classInd.txt`` ("1 ApplyEyeMakeup" / "1,name"), is dropped."""
    if text.lstrip().startswith("["):
        return [str(name) for name in json.loads(text)]
    names = []
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        head, _, rest = line.replace(",", " ", 1).partition(" ")
        names.append(rest.strip() if head.isdigit() and rest.strip() else line)
    return names


def checkpoint_extra(card: ModelCard | None) -> dict[str, Any]:
    """Extra entries for `save_checkpoint(..., **checkpoint_extra(card))`."""
    return {} if card is None else {CARD_KEY: card.to_dict()}


# ---------------------------------------------------------------------------------------------- folder
@dataclass
class RunFolder:
    """A run folder's file paths; `locate` turns a user's --model argument into one."""

    path: Path
    checkpoint: Path | None = field(default=None)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.checkpoint is None:
            self.checkpoint = self.path / BEST_FILE

    best = property(lambda self: self.path / BEST_FILE)
    last = property(lambda self: self.path / LAST_FILE)
    config = property(lambda self: self.path / CONFIG_FILE)
    card_file = property(lambda self: self.path / CARD_FILE)
    log = property(lambda self: self.path / LOG_FILE)
    classes = property(lambda self: self.path / CLASSES_FILE)
    split = property(lambda self: self.path / SPLIT_FILE)
    participant_split = property(lambda self: self.path / PARTICIPANT_SPLIT_FILE)
    training_participants = property(lambda self: self.path / TRAINING_PARTICIPANTS_FILE)
    calibration = property(lambda self: self.path / CALIBRATION_FILE)
    external_calibration = property(lambda self: self.path / EXTERNAL_CALIBRATION_FILE)
    evaluation = property(lambda self: self.path / EVALUATION_FILE)
    engine_agreement = property(lambda self: self.path / ENGINE_AGREEMENT_FILE)

    def exit_policy(self, budget: float | None = None) -> Path:
        """The default thresholds (budget None) or those `calibrate` fitted for `budget` GMACs."""
        if budget is None:
            return self.path / EXIT_POLICY_FILE
        if not math.isfinite(budget) or budget <= 0:
            raise ValueError(f"a budget must be a positive number of GMACs, got {budget}")
        return self.path / EXIT_POLICY_DIR / f"budget-{budget:.6g}.json"

    def exit_policies(self) -> dict[float, Path]:
        """Budget -> policy file for every budget `calibrate` has fitted (sorted by budget)."""
        found = {}
        for path in sorted((self.path / EXIT_POLICY_DIR).glob("budget-*.json")):
            try:
                found[float(path.stem.removeprefix("budget-"))] = path
            except ValueError:
                continue
        return dict(sorted(found.items()))

    @classmethod
    def locate(cls, model_arg: str | Path) -> RunFolder:
        """RUN/ (its best.pt), RUN/best.pt or RUN/last.pt -> RunFolder; RunFolderError for anything else."""
        path = Path(model_arg)
        if path.is_dir():
            if not (path / BEST_FILE).is_file():
                raise RunFolderError(f"{path} is a folder without {BEST_FILE}: not a trained run folder "
                                     f"(train one with `adafocus train --out {path}`)")
            return cls(path, path / BEST_FILE)
        if path.name in MODEL_FILES:
            if not path.is_file():
                raise RunFolderError(f"no model at {path} (expected a trained run folder's {path.name})")
            return cls(path.parent, path)
        if not path.exists():
            raise RunFolderError(f"no run folder or model at {path}; pass a run folder (RUN) or RUN/{BEST_FILE}")
        if path.name == CALIBRATION_FILE or path.parent.name == EXIT_POLICY_DIR or path.name.endswith(".json"):
            raise RunFolderError(f"{path} is a run's calibration/threshold data, not a model; pass the run folder "
                                 f"{path.parent if path.parent.name != EXIT_POLICY_DIR else path.parent.parent} "
                                 f"or its {BEST_FILE}")
        raise RunFolderError(f"{path} is not a run folder's model; pass a run folder (RUN) or RUN/{BEST_FILE} "
                             f"(or RUN/{LAST_FILE})")

    # ---------------------------------------------------------------------------- engine agreement
    def engine_agreements(self) -> dict[str, dict[str, Any]]:
        """Every stored agreement of a CPU engine precision with torch fp32: {key: entry} (empty when none or
        when the file is unreadable: it is then measured again)."""
        try:
            data = json.loads(self.engine_agreement.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def record_engine_agreement(self, key: str, entry: dict[str, Any]) -> None:
        """Add (or replace) one agreement under ``key``, keeping the others (written atomically)."""
        from adafocus.core.io import atomic_write_json

        atomic_write_json(self.engine_agreement, {**self.engine_agreements(), key: entry})

    def checkpoint_digest(self) -> str:
        """The first 16 hex digits of the sha256 of the chosen checkpoint's bytes (what an agreement was
        measured on; a retrained best.pt gets a new one)."""
        import hashlib

        digest = hashlib.sha256()
        with open(self.checkpoint, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest()[:16]

    # ------------------------------------------------------------------------------------ class names
    def write_classes(self, class_names: list[str]) -> None:
        from adafocus.core.io import atomic_write_json

        atomic_write_json(self.classes, list(class_names))

    def read_classes(self, num_classes: int) -> list[str] | None:
        """classes.json's names (None when absent); RunFolderError when it does not fit the model."""
        if not self.classes.is_file():
            return None
        names = json.loads(self.classes.read_text(encoding="utf-8"))
        if isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) for n in names):
            return names
        raise RunFolderError(f"{self.classes} should list the model's {num_classes} class names")

    # ----------------------------------------------------------------------------------------- card
    def write_card(self, card: ModelCard) -> None:
        from adafocus.core.io import atomic_write_json

        atomic_write_json(self.card_file, card.to_dict())

    def read_card(self, state: dict[str, Any]) -> ModelCard:
        """The card of a loaded checkpoint, or one derived from this folder for checkpoints without one."""
        if state.get(CARD_KEY) is not None:
            return ModelCard.from_dict(state[CARD_KEY])
        return self.derive_card(state["config"])

    def derive_card(self, config: dict[str, Any]) -> ModelCard:
        """A card for an old checkpoint (no "card" entry) from the files of its folder (module docstring)."""
        model_config = config["model"]
        num_classes = int(model_config["num_classes"])
        names = self.read_classes(num_classes) or [f"class_{i}" for i in range(num_classes)]
        normalisation = normalisation_of(model_config)
        cv_file = self.path.parent / CV_FILE
        if self.training_participants.is_file() and cv_file.is_file():
            cv = json.loads(cv_file.read_text(encoding="utf-8"))
            fold = int(self.path.name.rsplit("-", 1)[-1]) if self.path.name.rsplit("-", 1)[-1].isdigit() else None
            spec = {**cv.get("clip", {}), "template": "MNI152NLin2009aSym", "t1_linear": None}
            calibration = {"source": "cv-fold", "data": cv.get("manifest"), "cv_dir": str(self.path.parent.absolute()),
                           "fold": fold, "subset": "validation"}
            return ModelCard("mri", names, spec, normalisation, calibration, derived=True)
        calibration = None
        if self.classes.is_file() and self.split.is_file():
            split = json.loads(self.split.read_text(encoding="utf-8"))  # paths relative to an unrecorded root
            calibration = {"source": "video-split", "data": None, "subset": "val",
                           "ids": [key for key, _ in split.get("splits", {}).get("val", [])]}
        return ModelCard("video", names, frames_input(model_config), normalisation, calibration, derived=True)


# ------------------------------------------------------------------------------------------------ load
@dataclass
class LoadedRun:
    """A trained model ready for inference with everything its run folder says about it."""

    model: Any          # adafocus.core.model.UniAdaFocus, in eval mode on the requested device
    preset: Any         # adafocus.core.config.Preset, as trained
    card: ModelCard
    folder: RunFolder
    checkpoint: Path


def load_run(model_arg: str | Path, *, device: str = "auto") -> LoadedRun:
    """Locate (see RunFolder.locate), load weights-only, rebuild the model and read its card."""
    folder = RunFolder.locate(model_arg)
    state = load_checkpoint(folder.checkpoint)
    if not isinstance(state.get("config"), dict) or "model" not in state["config"]:
        raise RunFolderError(f"{folder.checkpoint} holds no model configuration: not a model checkpoint")
    preset = Preset.from_dict(state["config"])
    preset.model.glance_pretrained = preset.model.local_pretrained = None  # the checkpoint has the weights
    model = UniAdaFocus(preset.model)
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as error:
        raise RunFolderError(f"{folder.checkpoint}: weights do not fit its own config "
                             f"({str(error).splitlines()[0]})") from None
    card = folder.read_card(state)
    if len(card.class_names) != preset.model.num_classes:
        raise RunFolderError(f"{folder.checkpoint}: its card names {len(card.class_names)} classes, the model "
                             f"has {preset.model.num_classes} outputs")
    return LoadedRun(model.to(resolve_device(device)).eval(), preset, card, folder, folder.checkpoint)


def missing_data_message(run: LoadedRun, where: str | None, what: str) -> str:
    return (f"the calibration split of {run.folder.path} ({what}) was at {where}, which is not there any more; "
            f"pass --data with its new location")


# ------------------------------------------------------------------------------------------ exit policy
def load_exit_policy(path: str | Path) -> ExitPolicy:
    return ExitPolicy.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


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
