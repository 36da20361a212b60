"""Registration quality control: scores for every registered scan, a flag and a reason a person understands.

Computed by `RegisterToMNI` (preprocess.py) on the template grid right after the affine registration, before
the crop, and saved beside the preprocessed scan as `<stem>_qc.json` (`qc_json_path`); `preprocess_manifest`
copies them into the manifest's qc_* columns.

Scores
- ncc: normalised cross-correlation (Pearson r) of the registered scan with the template over the template's
  brain mask (nilearn's MNI152 brain mask, template.py). Voxels the scan did not reach count as 0. Computed
  on the template's `QC_SPACING_MM` grid (the scan smoothed to it first), whatever the output spacing, so
  that noise and fine anatomy do not move the score and one threshold serves every preprocessing setting.
- nmi: Studholme's normalised mutual information (H(A) + H(B)) / H(A, B) over the same voxels, 32 bins
  (1 = independent, 2 = one image determines the other).
- coverage: fraction of brain-mask voxels inside the scan's field of view that received a non-zero value.
- rotation_deg, scale_min, scale_max, shear: the registration's linear part (template mm -> native mm),
  split as Q U (QR): rotation angle of Q, i.e. relative to the orientation the header gave the scan; the
  scales are U's diagonal (scan size / template size per axis), shear the largest |U_ij / U_ii|, i < j.
- probe_gain, probe_best: the orientation probe. The scan (as the header orients it) is centred on the
  template by its intensity centroid (a moments alignment) in each of the 24 proper axis
  permutations/flips; probe_gain = best NCC among the 23 others minus the NCC of the header's own
  orientation (negative when the header's orientation is the best match), probe_best = where the template's
  x, y, z axes land in the scan's world in the best of all 24 ("RAS" = as the header says), probe_ncc = that
  best orientation's NCC (a permutation only counts when it also matches well). Mirror images are
  not probed: the template is left-right symmetric, so a left-right flip cannot be told apart.

Flags (every threshold is a named constant below; values chosen from the measurements in
docs/results/qc_thresholds.json, written by `measure_qc_thresholds`): "fail" when any fail rule holds,
else "warn" when a warn rule holds or loading recorded a warning (e.g. qform/sform disagreement), else
"pass". The reason lists every rule that fired, e.g. "registration failed: NCC 0.62 with the template
(pass >= 0.90); the head may be lying on its side (a permuted orientation matches better)".
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from adafocus.core.io import atomic_write_json
from adafocus.datasets.mri.template import mni_brain_mask, mni_template, template_array

# ---------------------------------------------------------------------------------------------- thresholds
# Measured (docs/results/qc_thresholds.json: 54 good scans = the 33-scan demo cohort + 21 phantoms of three
# layouts at 4-16 degree head tilts under three preprocessing settings; 28 broken = 4 kinds x 7): good NCC
# 0.82-0.99 (demo cohort 0.82-0.90, phantoms >= 0.97), broken NCC <= 0.38; good NMI >= 1.12, broken <= 1.02
# (half-head 1.14, caught by coverage); good coverage >= 0.998, half-head <= 0.44; good scales 0.92-1.05 and
# shear <= 0.04; good probe gain <= -0.21, orientation faults >= 0.21 with a best-orientation NCC >= 0.66.
# Fail thresholds sit near the middle of each gap. Real scans match an average template less well than these
# template-derived ones: expect lower NCC (more "warn"), and re-measure on a labelled real QC set if available.
NCC_PASS = 0.80            # at or above: the registration matches the template
NCC_FAIL = 0.60            # below: registration failed
NMI_FAIL = 1.07            # below: the scan barely predicts the template inside the brain
COVERAGE_PASS = 0.98       # at or above: the whole template brain received data
COVERAGE_FAIL = 0.85       # below: part of the head is missing from the field of view
SCALE_RANGE = (0.75, 1.35)  # plausible scan / template size per axis
SHEAR_MAX = 0.15           # largest plausible |U_ij / U_ii|
ROTATION_WARN_DEG = 20.0   # rotation relative to the header's orientation worth a look
ROTATION_FAIL_DEG = 45.0   # beyond this the header's orientation is not the head's
PROBE_MARGIN = 0.10        # another orientation beats the header's by this much NCC: "clearly better"
PROBE_MATCH_MIN = 0.50     # ... and itself matches the template at least this well
PROBE_SPACING_MM = 6.0     # grid of the orientation probe
QC_SPACING_MM = 4.0        # NCC and NMI are computed on the template's 4 mm grid (or the scan's, if coarser)
NMI_BINS = 32

FLAG_PASS, FLAG_WARN, FLAG_FAIL = "pass", "warn", "fail"
QC_SUFFIX = "_qc.json"
_AXIS_NAMES = {0: "left-right", 1: "anterior-posterior", 2: "inferior-superior"}


@dataclass(frozen=True)
class QCScores:
    """Scores of one registered scan (module docstring)."""

    ncc: float
    nmi: float
    coverage: float
    rotation_deg: float
    scale_min: float
    scale_max: float
    shear: float
    probe_gain: float
    probe_best: str
    probe_ncc: float

    def rounded(self) -> QCScores:
        """Values rounded so that the manifest's text form reads back exactly (4 decimals; angles 2)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return QCScores(**{k: (round(float(v), 2 if k == "rotation_deg" else 4) if isinstance(v, float) else v)
                           for k, v in values.items()})


@dataclass(frozen=True)
class QCResult:
    scores: QCScores
    flag: str
    reason: str

    def to_dict(self) -> dict:
        return {"scores": asdict(self.scores), "flag": self.flag, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict) -> QCResult:
        return cls(QCScores(**data["scores"]), data["flag"], data["reason"])


# ------------------------------------------------------------------------------------------------- scores
def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of a and b over mask (0 when either is constant there)."""
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / denominator) if denominator > 0 else 0.0


def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    low, high = np.percentile(values, (0.5, 99.5))
    if high <= low:
        return np.zeros(values.shape, dtype=np.int64)
    return np.clip(((values - low) / (high - low) * bins).astype(np.int64), 0, bins - 1)


def nmi(a: np.ndarray, b: np.ndarray, mask: np.ndarray, bins: int = NMI_BINS) -> float:
    """Studholme's normalised mutual information (H(A) + H(B)) / H(A, B) over mask, robust-range bins."""
    ia, ib = _bin_index(a[mask], bins), _bin_index(b[mask], bins)
    joint = np.bincount(ia * bins + ib, minlength=bins * bins).astype(np.float64)
    joint /= max(joint.sum(), 1.0)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    h_joint = entropy(joint)
    grid = joint.reshape(bins, bins)
    return (entropy(grid.sum(1)) + entropy(grid.sum(0))) / h_joint if h_joint > 0 else 1.0


def coverage(received: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of mask voxels that received data."""
    return float(np.count_nonzero(received & mask)) / max(int(np.count_nonzero(mask)), 1)


def decompose_linear(matrix: np.ndarray) -> dict:
    """Rotation (deg), per-axis scales and largest shear of the linear part of a 4x4 (or 3x3) affine: Q U with
    U upper-triangular with a positive diagonal. `mirrored` when the map reverses handedness."""
    linear = np.asarray(matrix, dtype=float)[:3, :3]
    q, u = np.linalg.qr(linear)
    signs = np.sign(np.diag(u))
    signs[signs == 0] = 1.0
    q, u = q * signs, (u.T * signs).T  # Q diag(s) diag(s) U with diag(s)^2 = I
    mirrored = bool(np.linalg.det(q) < 0)
    if mirrored:
        q = q @ np.diag([-1.0, 1.0, 1.0])
    angle = math.degrees(math.acos(float(np.clip((np.trace(q) - 1.0) / 2.0, -1.0, 1.0))))
    scales = np.diag(u)
    shear = max(abs(u[i, j] / u[i, i]) for i in range(3) for j in range(i + 1, 3))
    return {"rotation_deg": angle, "scales": scales.tolist(), "shear": float(shear), "mirrored": mirrored,
            "rotation": q}


def proper_rotations() -> list[np.ndarray]:
    """The 24 signed axis permutations with determinant +1 (identity first)."""
    rotations = []
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        for signs in np.ndindex(2, 2, 2):
            matrix = np.zeros((3, 3))
            for column, row in enumerate(perm):
                matrix[row, column] = 1.0 if signs[column] == 0 else -1.0
            if np.linalg.det(matrix) > 0:
                rotations.append(matrix)
    return sorted(rotations, key=lambda m: -np.trace(m))  # identity (trace 3) first


def axis_codes(rotation: np.ndarray) -> str:
    """Where the template's x, y, z axes land in the scan's world: identity -> "RAS"."""
    names = ("LR", "PA", "IS")
    codes = ""
    for column in range(3):
        row = int(np.argmax(np.abs(rotation[:, column])))
        codes += names[row][1 if rotation[row, column] > 0 else 0]
    return codes


def _rotation_from_codes(codes: str) -> np.ndarray:
    unit = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    matrix = np.zeros((3, 3))
    for column, code in enumerate(codes):
        row, sign = unit[code]
        matrix[row, column] = sign
    return matrix


def describe_rotation(codes: str) -> str:
    """Plain words for the orientation the probe found best, e.g. "lying on its side"."""
    rotation = _rotation_from_codes(codes)
    angle = round(math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))))
    if angle == 0:
        return "as the header says"
    values, vectors = np.linalg.eig(rotation)
    axis = np.real(vectors[:, int(np.argmin(np.abs(values - 1)))])
    main = int(np.argmax(np.abs(axis)))
    if abs(axis[main]) < 0.99:
        return f"turned {angle} degrees about a diagonal axis (the voxel axes are probably permuted)"
    if angle == 90 and main == 1:
        return "lying on its side (turned 90 degrees about the anterior-posterior axis)"
    if angle == 180 and main == 1:
        return "upside down (turned 180 degrees about the anterior-posterior axis)"
    if angle == 180 and main == 2:
        return "facing backwards (turned 180 degrees about the inferior-superior axis)"
    return f"turned {angle} degrees about the {_AXIS_NAMES[main]} axis"


def _centroid_lps(image: sitk.Image) -> np.ndarray:
    """Physical (LPS) centroid of the voxels above 10% of the 99th intensity percentile."""
    array = sitk.GetArrayViewFromImage(image)
    threshold = 0.1 * float(np.percentile(array, 99))
    index_zyx = np.argwhere(array > threshold)
    if index_zyx.size == 0:
        index_zyx = np.argwhere(np.ones_like(array, dtype=bool))
    weights = array[tuple(index_zyx.T)].astype(np.float64)
    weights = weights if weights.sum() > 0 else np.ones(len(index_zyx))
    mean_index = (index_zyx[:, ::-1] * weights[:, None]).sum(0) / weights.sum()
    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + direction @ (mean_index * spacing)


def orientation_probe(moving: sitk.Image) -> tuple[float, str, float]:
    """(probe_gain, probe_best, probe_ncc) of a scan (LPS SimpleITK image as the header orients it)."""
    fixed = mni_template(PROBE_SPACING_MM)
    mask = mni_brain_mask(PROBE_SPACING_MM)
    factors = [max(1, int(PROBE_SPACING_MM / 2 // s)) for s in moving.GetSpacing()]
    small = sitk.BinShrink(sitk.Cast(moving, sitk.sitkFloat32), factors)
    small = sitk.SmoothingRecursiveGaussian(small, PROBE_SPACING_MM / 2)
    template = template_array(PROBE_SPACING_MM)
    centre_fixed, centre_moving = _centroid_lps(fixed), _centroid_lps(small)
    flip = np.diag([-1.0, -1.0, 1.0])
    scores = []
    for rotation in proper_rotations():
        transform = sitk.AffineTransform(3)
        transform.SetMatrix((flip @ rotation @ flip).flatten().tolist())
        transform.SetCenter(centre_fixed.tolist())
        transform.SetTranslation((centre_moving - centre_fixed).tolist())
        resampled = sitk.Resample(small, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        scores.append((ncc(sitk.GetArrayViewFromImage(resampled).transpose(2, 1, 0), template, mask), rotation))
    header = scores[0][0]
    best_other = max(score for score, _ in scores[1:])
    best_score, best_rotation = max(scores, key=lambda item: item[0])
    return best_other - header, axis_codes(best_rotation), best_score


def on_qc_grid(registered: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, float]:
    """(registered scan on the QC grid, that grid's spacing): `mni_template(max(QC_SPACING_MM, spacing))`,
    smoothed first (sigma = QC_SPACING_MM / 2, as the coarse template is) when the scan's grid is finer."""
    qc_spacing = max(QC_SPACING_MM, spacing_mm)
    if qc_spacing == spacing_mm:
        return registered, spacing_mm
    image = sitk.GetImageFromArray(np.ascontiguousarray(registered.transpose(2, 1, 0), dtype=np.float32))
    image.CopyInformation(mni_template(spacing_mm))
    image = sitk.SmoothingRecursiveGaussian(image, QC_SPACING_MM / 2)
    coarse = sitk.Resample(image, mni_template(qc_spacing), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(coarse).transpose(2, 1, 0), qc_spacing


def registration_scores(moving: sitk.Image, transform: sitk.Transform, registered: np.ndarray,
                        spacing_mm: float, mni_to_native_world: np.ndarray) -> QCScores:
    """Scores of a registration (module docstring). `moving`: the scan as registered (LPS image);
    `registered`: it resampled on `mni_template(spacing_mm)` [X, Y, Z]; `mni_to_native_world`: the 4x4 RAS map."""
    coarse, qc_spacing = on_qc_grid(registered, spacing_mm)
    template, brain = template_array(qc_spacing), mni_brain_mask(qc_spacing)
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    fov = sitk.Resample(ones, mni_template(spacing_mm), transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    received = (sitk.GetArrayViewFromImage(fov).transpose(2, 1, 0) > 0) & (registered != 0)
    parts = decompose_linear(mni_to_native_world)
    gain, best, best_ncc = orientation_probe(moving)
    return QCScores(ncc=ncc(coarse, template, brain), nmi=nmi(coarse, template, brain),
                    coverage=coverage(received, mni_brain_mask(spacing_mm)),
                    rotation_deg=parts["rotation_deg"] + 180.0 * parts["mirrored"],
                    scale_min=float(min(parts["scales"])), scale_max=float(max(parts["scales"])),
                    shear=parts["shear"], probe_gain=float(gain), probe_best=best,
                    probe_ncc=float(best_ncc)).rounded()


# ------------------------------------------------------------------------------------------------ verdict
def qc_verdict(scores: QCScores, warnings: tuple[str, ...] | list[str] = ()) -> tuple[str, str]:
    """(flag, reason) from the scores and any loading warnings (thresholds at the top of this module)."""
    fails, warns = [], []
    if scores.ncc < NCC_FAIL:
        fails.append(f"NCC {scores.ncc:.2f} with the template (pass >= {NCC_PASS:.2f})")
    elif scores.ncc < NCC_PASS:
        warns.append(f"NCC {scores.ncc:.2f} with the template is low (pass >= {NCC_PASS:.2f})")
    if scores.nmi < NMI_FAIL:
        fails.append(f"NMI {scores.nmi:.3f} with the template (fail below {NMI_FAIL:.2f})")
    if scores.coverage < COVERAGE_FAIL:
        fails.append(f"only {scores.coverage:.0%} of the template brain is inside the scan's field of view "
                     f"(fail below {COVERAGE_FAIL:.0%}): part of the head is cut off")
    elif scores.coverage < COVERAGE_PASS:
        warns.append(f"{scores.coverage:.0%} of the template brain is inside the field of view "
                     f"(pass >= {COVERAGE_PASS:.0%})")
    low, high = SCALE_RANGE
    if scores.scale_min < low or scores.scale_max > high:
        fails.append(f"implausible scaling {scores.scale_min:.2f}-{scores.scale_max:.2f} of the template "
                     f"(plausible {low:.2f}-{high:.2f})")
    if scores.shear > SHEAR_MAX:
        fails.append(f"implausible shear {scores.shear:.2f} (at most {SHEAR_MAX:.2f})")
    if scores.rotation_deg > ROTATION_FAIL_DEG:
        fails.append(f"the registration turned the head {scores.rotation_deg:.0f} degrees away from the header's "
                     f"orientation (at most {ROTATION_FAIL_DEG:.0f})")
    elif scores.rotation_deg > ROTATION_WARN_DEG:
        warns.append(f"the head is turned {scores.rotation_deg:.0f} degrees from the header's orientation")
    if scores.probe_gain > PROBE_MARGIN and scores.probe_ncc >= PROBE_MATCH_MIN:
        fails.append(f"the head may be {describe_rotation(scores.probe_best)} (a permuted orientation matches "
                     f"the template better by {scores.probe_gain:.2f} NCC): the header's orientation is "
                     f"probably wrong")
    warns.extend(warnings)
    if fails:
        reason = "registration failed: " + "; ".join(fails)
        return FLAG_FAIL, reason + ("; also: " + "; ".join(warns) if warns else "")
    if warns:
        return FLAG_WARN, "check: " + "; ".join(warns)
    return FLAG_PASS, ""


def check_registration(moving: sitk.Image, transform: sitk.Transform, registered: np.ndarray, spacing_mm: float,
                       mni_to_native_world: np.ndarray, warnings: tuple[str, ...] | list[str] = ()) -> QCResult:
    """Scores, flag and reason of one registration (what RegisterToMNI records)."""
    scores = registration_scores(moving, transform, registered, spacing_mm, mni_to_native_world)
    flag, reason = qc_verdict(scores, tuple(warnings))
    return QCResult(scores, flag, reason)


# ------------------------------------------------------------------------------------------------- files
def qc_json_path(nifti_path: str | Path) -> Path:
    """`<stem>_qc.json` beside a preprocessed NIfTI."""
    path = Path(nifti_path)
    return path.with_name(path.name.removesuffix(".gz").removesuffix(".nii") + QC_SUFFIX)


def write_qc_json(nifti_path: str | Path, result: QCResult) -> Path:
    path = qc_json_path(nifti_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result.to_dict())
    return path


def read_qc_json(nifti_path: str | Path) -> QCResult | None:
    """The QC saved beside a preprocessed scan, or None (caches written before QC, or unreadable)."""
    path = qc_json_path(nifti_path)
    if not path.is_file():
        return None
    try:
        return QCResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError):
        return None
