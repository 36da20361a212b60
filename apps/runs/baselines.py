"""Two reference models for `adafocus cv`, run on the dynamic model's own folds (same participant splits), so a
report shows what adaptivity costs or saves.

- **classical**: mean intensity and tissue volume in the left/right hippocampus and left/right lateral
  ventricle (axis-aligned MNI-mm boxes, `REGIONS`) of each preprocessed, MNI-registered volume, then a
  standardised logistic regression fitted on the fold's training participants (train + validation; it selects
  nothing) and tested on its test participants. Its cost is reported as 0 GMACs.
- **static 2.5D**: every candidate slice (no policy, no early exit) through the fold's local encoder at the
  dynamic model's patch size P x P, features averaged over slices, one linear head (`StaticSliceModel`);
  trained with the preset's recipe (SGD + cosine, LR multipliers, epochs, batch size, class balancing, the same
  training augmentation) on the fold's training participants, selected on its validation participants
  (core.train.is_better). GMACs per scan measured by core.flops.count_gmacs.

Per fold, under `fold-<i>/baselines/` (names: reports.cv_report):
    classical.json, static.json                      metrics at each participant's first session + GMACs per
                                                     scan; written last: a baseline with its JSON is finished
    classical_predictions.tsv, static_predictions.tsv one row per test scan (columns as predictions.tsv's first ones)
    static.pt                                        the selected static model (weights-only loadable)
A baseline without its JSON is recomputed from scratch (the static model's training does not resume).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from adafocus.core.backbones import create_backbone, encoder_input
from adafocus.core.checkpoint import save_checkpoint
from adafocus.core.config import ModelConfig, Preset
from adafocus.core.device import cuda_autocast, resolve_device
from adafocus.core.flops import count_gmacs, eval_mode
from adafocus.core.io import atomic_write_json, atomic_write_text
from adafocus.core.model import encoder_in_channels
from adafocus.core.train import (
    backward_and_step,
    balanced_sampler,
    cosine_lr,
    is_better,
    prepare_for_training,
)
from adafocus.datasets.mri.dataset import AugmentedCopies, ClipSpec, MRISliceDataset, collate_scans
from adafocus.datasets.mri.manifest import ManifestRow
from adafocus.datasets.splits import Fold, check_no_leakage
from adafocus.reports.cv_report import BASELINE_TITLES, baseline_dir, baseline_file, fold_dir
from adafocus.reports.metrics import binary_metrics
from adafocus.reports.tables import tsv_text
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn
from torch.utils.data import DataLoader

BASELINE_COLUMNS = ("participant_id", "session_id", "baseline", "label", "prediction", "probability", "gmacs")
# Preprocessed volumes are min-max normalised to [0, 1] (datasets.mri.preprocess). On nilearn's MNI152 2009a
# template so scaled, CSF (the ventricles) lies below 0.3 and grey / white matter above 0.5: voxels at or
# above TISSUE_THRESHOLD count as tissue.
TISSUE_THRESHOLD = 0.3


@dataclass(frozen=True)
class MNIBox:
    """An axis-aligned box in MNI152 mm (RAS: +x right, +y anterior, +z superior), bounds inclusive."""

    x: tuple[float, float]
    y: tuple[float, float]
    z: tuple[float, float]

    def mirrored(self) -> MNIBox:
        """The same box in the other hemisphere (x -> -x)."""
        return MNIBox((-self.x[1], -self.x[0]), self.y, self.z)


# Regions of the classical reference, in MNI152 mm. Boxes, not segmentations: they enclose the structure and
# some of its surroundings, so atrophy shows as a darker box mean and less tissue in it.
# - Hippocampus: around the AAL atlas's hippocampus (Tzourio-Mazoyer et al., NeuroImage 15:273-289, 2002;
#   centroids about (+-27, -21, -10) mm), spanning its ~32 mm anterior-posterior extent; the cohort
#   generator's medial-temporal atrophy region (datasets.mri.cohort.AtrophyRegion, centre (+-28, -20, -14))
#   lies inside it.
# - Lateral ventricle (frontal horn, body, atrium; not the temporal horn): the 10th-90th percentiles, per axis
#   and axial level, of the CSF (intensity < 0.3 of the maximum) connected to the ventricles in nilearn's MNI152
#   2009a template (datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz), the template
#   `adafocus preprocess` registers to; measured for this module (x 2-31, y -52-20, z 0-28 mm on the right).
_HIPPOCAMPUS_RIGHT = MNIBox(x=(18.0, 36.0), y=(-40.0, -8.0), z=(-24.0, -2.0))
_VENTRICLE_RIGHT = MNIBox(x=(2.0, 28.0), y=(-48.0, 18.0), z=(2.0, 26.0))
REGIONS: dict[str, MNIBox] = {
    "hippocampus_left": _HIPPOCAMPUS_RIGHT.mirrored(),
    "hippocampus_right": _HIPPOCAMPUS_RIGHT,
    "lateral_ventricle_left": _VENTRICLE_RIGHT.mirrored(),
    "lateral_ventricle_right": _VENTRICLE_RIGHT,
}
FEATURE_NAMES = tuple(f"{region}_{kind}" for region in REGIONS for kind in ("mean", "tissue_ml"))


# ------------------------------------------------------------------------------------------- classical
def box_mask(box: MNIBox, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Bool [X, Y, Z]: the voxels of a grid (`affine`: voxel -> MNI mm) whose centres lie in `box`.
    Only the voxel block spanned by the box's corners is tested, so 1 mm volumes stay cheap."""
    corners = np.array([[x, y, z, 1.0] for x in box.x for y in box.y for z in box.z]).T
    voxels = (np.linalg.inv(affine) @ corners)[:3]
    low = np.clip(np.floor(voxels.min(axis=1)).astype(int), 0, shape)
    high = np.clip(np.ceil(voxels.max(axis=1)).astype(int) + 1, 0, shape)
    mask = np.zeros(shape, dtype=bool)
    if np.any(high <= low):
        return mask
    ijk = np.stack(np.meshgrid(*(np.arange(lo, hi) for lo, hi in zip(low, high)), indexing="ij"))
    world = np.tensordot(affine[:3, :3], ijk, axes=1) + affine[:3, 3, None, None, None]
    inside = np.ones(ijk.shape[1:], dtype=bool)
    for axis, (lo, hi) in enumerate((box.x, box.y, box.z)):
        inside &= (world[axis] >= lo - 1e-6) & (world[axis] <= hi + 1e-6)
    mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = inside
    return mask


def region_features(array: np.ndarray, affine: np.ndarray, *, source: str = "volume") -> dict[str, float]:
    """Per region of `REGIONS`: ``<region>_mean`` (mean intensity) and ``<region>_tissue_ml`` (volume of its
    voxels at or above TISSUE_THRESHOLD, in ml) of an MNI-registered volume. ValueError when a region lies
    outside the volume's field of view."""
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    features = {}
    for name, box in REGIONS.items():
        values = array[box_mask(box, affine, array.shape[:3])]
        if values.size == 0:
            raise ValueError(f"{source}: the {name} region lies outside the volume's field of view; "
                             f"the classical reference needs volumes registered to MNI space (`adafocus preprocess`)")
        features[f"{name}_mean"] = float(values.mean())
        features[f"{name}_tissue_ml"] = float((values >= TISSUE_THRESHOLD).sum() * voxel_ml)
    return features


def scan_features(rows: Sequence[ManifestRow], cache: dict | None = None) -> np.ndarray:
    """float [N, len(FEATURE_NAMES)] region features of each row's preprocessed volume. `cache` (a dict kept
    across folds) holds each scan's features, so every volume is read once per `cv` run."""
    cache = {} if cache is None else cache
    out = []
    for row in rows:
        key = str(row.preprocessed_path)
        if key not in cache:
            image = nib.load(key)
            array = np.asarray(image.dataobj, dtype=np.float32)
            values = region_features(array, image.affine, source=f"{row.participant_id} {row.session_id}")
            cache[key] = np.array([values[name] for name in FEATURE_NAMES])
        out.append(cache[key])
    return np.stack(out) if out else np.zeros((0, len(FEATURE_NAMES)))


def classical_model(seed: int = 0) -> Pipeline:
    """Standardised features -> logistic regression (L2, C=1), classes weighted by inverse frequency so the
    decision suits balanced accuracy."""
    return Pipeline([("scale", StandardScaler()),
                     ("logistic", LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed))])


def fit_predict_classical(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray, *,
                          seed: int = 0) -> np.ndarray:
    """Fit `classical_model` on (train_x, train_y); the positive-class probability of each test row."""
    train_y = np.asarray(train_y, dtype=int)
    if len(np.unique(train_y)) != 2:
        raise ValueError(f"the classical reference needs both classes among the training scans; got labels "
                         f"{sorted(set(train_y.tolist()))}")
    model = classical_model(seed).fit(train_x, train_y)
    return model.predict_proba(test_x)[:, list(model.classes_).index(1)]


# ------------------------------------------------------------------------------------------ static 2.5D
class StaticSliceModel(nn.Module):
    """The static 2.5D reference: every candidate slice ``[B, N, C, S, S]`` resized to the patch size P x P
    (area averaging), through the local encoder built as the dynamic model's (`config.local_backbone`, its
    kwargs and pretrained weights), features averaged over the N slices, dropout, one linear head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.local_encoder = create_backbone(c.local_backbone, pretrained=c.local_pretrained,
                                             **dict(c.local_backbone_kwargs))
        if self.local_encoder.frames_per_clip != 1:
            raise ValueError(f"the static 2.5D reference encodes slices one by one; the local backbone "
                             f"{c.local_backbone} mixes {self.local_encoder.frames_per_clip} frames per clip")
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(self.local_encoder.feature_dim, c.num_classes))
        self.register_buffer("pixel_mean", torch.tensor(c.normalize_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.normalize_std).view(1, -1, 1, 1), persistent=False)

    def forward(self, clip: Tensor) -> Tensor:
        """``clip [B, N, C, S, S]`` in [0, 1] -> logits ``[B, classes]``."""
        batch, slices = clip.shape[:2]
        frames = clip.flatten(0, 1)
        size = self.config.patch_size
        if frames.shape[-1] != size or frames.shape[-2] != size:
            frames = F.interpolate(frames, size=(size, size), mode="area")
        features = self.local_encoder.pooled(encoder_input(self.local_encoder, frames, self.pixel_mean, self.pixel_std))
        return self.head(features.reshape(batch, slices, -1).mean(dim=1))

    def gmacs(self) -> float:
        """GMACs per scan of `config.num_candidates` slices of `config.frame_size`, by the FLOP counter."""
        c = self.config
        clip = torch.zeros(1, c.num_candidates, encoder_in_channels(self.local_encoder), c.frame_size, c.frame_size,
                           device=self.pixel_mean.device)
        return count_gmacs(self, clip)


def _optimizer(model: StaticSliceModel, preset: Preset) -> torch.optim.SGD:
    """SGD with the preset's LR multipliers: "local" for the encoder, "classifier" for the head."""
    cfg = preset.train
    groups = [{"params": list(module.parameters()), "lr_mult": cfg.lr_multipliers.get(key, 1.0)}
              for module, key in ((model.local_encoder, "local"), (model.head, "classifier"))]
    for group in groups:
        group["lr"] = cfg.lr * group["lr_mult"]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@torch.no_grad()
def _recalibrate_batch_norm(model: nn.Module, loader: DataLoader, device: torch.device, batches: int) -> None:
    """core.train.recalibrate_batch_norm for the static model (plain mean of `batches` training batches)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    for _, batch in zip(range(batches), loader):
        model(batch["clip"].to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@torch.no_grad()
def static_logits(model: StaticSliceModel, loader: DataLoader, device: torch.device) -> tuple[Tensor, Tensor]:
    """Logits ``[N, classes]`` and labels ``[N]`` over a loader, in eval mode."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(model(batch["clip"].to(device)).float().cpu())
        labels.append(batch["label"])
    if not logits:
        return torch.zeros(0, model.config.num_classes), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def train_static(preset: Preset, train_set: MRISliceDataset, val_set: MRISliceDataset, *, device: str = "auto",
                 progress: bool = False) -> tuple[StaticSliceModel, dict]:
    """Train a `StaticSliceModel` with the preset's recipe (core.train's: SGD + cosine without warm-up, LR
    multipliers, gradient clipping, class-balanced sampling, precise BN, AMP on CUDA) for `preset.train.epochs`;
    keep the epoch that core.train.is_better picks on `val_set`. Returns (model in eval mode, summary)."""
    cfg, dev = preset.train, resolve_device(device)
    torch.manual_seed(cfg.seed)
    model = prepare_for_training(StaticSliceModel(preset.model), dev)
    optimizer = _optimizer(model, preset)
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    sampler = balanced_sampler(train_set, cfg.seed) if cfg.balance_classes else None
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                              drop_last=True, collate_fn=collate_scans, num_workers=cfg.workers)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, collate_fn=collate_scans, num_workers=cfg.workers)
    if len(train_loader) == 0:
        raise ValueError(f"training set has {len(train_set)} scans, fewer than one batch of {cfg.batch_size}")
    total_steps = cfg.epochs * len(train_loader)
    best = {"accuracy": -1.0, "loss": math.inf, "epoch": 0, "state": None}
    epochs = range(cfg.epochs)
    if progress:
        from tqdm import tqdm
        epochs = tqdm(epochs, desc="static 2.5D", leave=False, dynamic_ncols=True)
    for epoch in epochs:
        model.train()
        for i, batch in enumerate(train_loader):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(cfg.lr, epoch * len(train_loader) + i, total_steps) * group["lr_mult"]
            clip, labels = batch["clip"].to(dev), batch["label"].to(dev)
            with cuda_autocast(dev, use_amp):
                loss = F.cross_entropy(model(clip).float(), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"static 2.5D loss became {loss.item()} at epoch {epoch + 1}, step {i}")
            backward_and_step(loss, model, optimizer, scaler, cfg.grad_clip)
        if cfg.precise_bn_batches:
            _recalibrate_batch_norm(model, train_loader, dev, cfg.precise_bn_batches)
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
            logits, labels = static_logits(model, val_loader, dev)
            accuracy = float((logits.argmax(-1) == labels).float().mean()) if len(labels) else float("nan")
            loss_value = float(F.cross_entropy(logits, labels)) if len(labels) else float("nan")
            if is_better(accuracy, loss_value, best["accuracy"], best["loss"]):
                best = {"accuracy": accuracy, "loss": loss_value, "epoch": epoch + 1,
                        "state": copy.deepcopy(model.state_dict())}
    if best["state"] is not None:  # else (no validation scans): the last epoch
        model.load_state_dict(best["state"])
    model.eval()
    return model, {"epochs": cfg.epochs, "selected_epoch": best["epoch"] or cfg.epochs,
                   "validation_accuracy": best["accuracy"] if best["state"] is not None else None}


@torch.no_grad()
def static_probabilities(model: StaticSliceModel, dataset: MRISliceDataset, *, batch_size: int = 16) -> np.ndarray:
    """Positive-class probability of each scan of `dataset` (binary models)."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_scans)
    logits, _ = static_logits(model, loader, model.pixel_mean.device)
    return torch.softmax(logits, dim=-1)[:, 1].numpy()


# -------------------------------------------------------------------------------------------- per fold
def first_session_flags(rows: Sequence[ManifestRow]) -> list[bool]:
    """True for each participant's first session (sorted session ids) among `rows` (as apps.runs.cv counts)."""
    first: dict[str, str] = {}
    for row in rows:
        first[row.participant_id] = min(first.get(row.participant_id, row.session_id), row.session_id)
    return [first[r.participant_id] == r.session_id for r in rows]


def prediction_rows(rows: Sequence[ManifestRow], probabilities: np.ndarray, gmacs: float) -> list[dict]:
    """One BASELINE_COLUMNS row per test scan (prediction: probability >= 0.5)."""
    flags = first_session_flags(rows)
    return [{"participant_id": r.participant_id, "session_id": r.session_id, "baseline": int(first),
             "label": r.label, "prediction": int(p >= 0.5), "probability": f"{float(p):.6f}", "gmacs": f"{gmacs:.6f}"}
            for r, p, first in zip(rows, probabilities, flags)]


def first_session_metrics(predictions: Sequence[dict]) -> dict[str, float]:
    """Binary metrics over each participant's first session (as apps.runs.cv.fold_metrics), + participants."""
    first = [p for p in predictions if int(p["baseline"])]
    labels = np.array([int(p["label"]) for p in first])
    return {**binary_metrics(labels, np.array([int(p["prediction"]) for p in first]),
                             np.array([float(p["probability"]) for p in first])),
            "participants": float(len(first))}


def _rows_of(rows: Sequence[ManifestRow], participants: Sequence[str]) -> list[ManifestRow]:
    wanted = set(participants)
    return [r for r in rows if r.participant_id in wanted]


def _finish(out: Path, name: str, predictions: list[dict], gmacs: float, details: dict) -> dict:
    """Write `name`'s predictions, then its JSON (the "finished" mark); returns the JSON's content."""
    atomic_write_text(out / f"{name}_predictions.tsv", tsv_text(BASELINE_COLUMNS, predictions))
    result = {"name": name, "title": BASELINE_TITLES[name], "metrics": first_session_metrics(predictions),
              "gmacs_per_scan": gmacs, **details}
    atomic_write_json(out / baseline_file(name), result)
    return result


def run_classical(fold: Fold, rows: Sequence[ManifestRow], out: Path, *, seed: int = 0,
                  feature_cache: dict | None = None) -> dict:
    """The classical reference on one fold: fit on its training participants (train + validation), score
    its test participants."""
    train_rows, test_rows = _rows_of(rows, fold.seen_in_training), _rows_of(rows, fold.test)
    probabilities = fit_predict_classical(scan_features(train_rows, feature_cache), [r.label for r in train_rows],
                                          scan_features(test_rows, feature_cache), seed=seed)
    return _finish(out, "classical", prediction_rows(test_rows, probabilities, 0.0), 0.0,
                   {"features": list(FEATURE_NAMES), "regions_mm": {k: dataclasses.asdict(v) for k, v in REGIONS.items()},
                    "training_scans": len(train_rows)})


def run_static(fold: Fold, rows: Sequence[ManifestRow], preset: Preset, spec: ClipSpec, out: Path, *,
               augment: bool | AugmentedCopies = True, device: str = "auto", progress: bool = False) -> dict:
    """The static 2.5D reference on one fold: train on its training participants, select on its validation
    participants, score its test participants; the selected model is saved as static.pt."""
    if preset.model.num_classes != 2:
        raise ValueError(f"the static 2.5D reference reports binary metrics; the preset has "
                         f"{preset.model.num_classes} classes")
    train_set = MRISliceDataset(_rows_of(rows, fold.train), spec, augment=augment)
    val_set = MRISliceDataset(_rows_of(rows, fold.validation), spec)
    model, summary = train_static(preset, train_set, val_set, device=device, progress=progress)
    save_checkpoint(out / "static.pt", model_state=model.state_dict(), config=preset.to_dict(),
                    kind="static_2.5d", clip=spec.to_dict(), **{k: v for k, v in summary.items() if v is not None})
    with eval_mode(model):
        gmacs = model.gmacs()
    test_rows = _rows_of(rows, fold.test)
    probabilities = static_probabilities(model, MRISliceDataset(test_rows, spec))
    return _finish(out, "static", prediction_rows(test_rows, probabilities, gmacs), gmacs, summary)


def run_fold_baselines(fold: Fold, rows: Sequence[ManifestRow], preset: Preset, spec: ClipSpec,
                       out_dir: str | Path, *, augment: bool | AugmentedCopies = True, device: str = "auto",
                       progress: bool = False, feature_cache: dict | None = None,
                       log: Callable[[str], None] = print) -> dict[str, dict]:
    """Both references on one fold of `adafocus cv` (after its dynamic model, whose training_participants.tsv
    guards the test participants). A finished reference (its JSON present) is read back, not recomputed."""
    run_dir = fold_dir(out_dir, fold.index)
    check_no_leakage(run_dir, fold.test)
    out = baseline_dir(out_dir, fold.index)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in BASELINE_TITLES:
        path = out / baseline_file(name)
        if path.exists():
            results[name] = json.loads(path.read_text(encoding="utf-8"))
            continue
        if name == "classical":
            results[name] = run_classical(fold, rows, out, seed=preset.train.seed, feature_cache=feature_cache)
        else:
            results[name] = run_static(fold, rows, preset, spec, out, augment=augment, device=device,
                                       progress=progress)
        log(f"fold {fold.index}: {BASELINE_TITLES[name]}: balanced accuracy "
            f"{results[name]['metrics']['balanced_accuracy']:.3f}, {results[name]['gmacs_per_scan']:.4g} GMACs/scan")
    return results
