"""A synthetic demo cohort in the OASIS-1 download layout, built from the real MNI152 template (nilearn).

Every participant is the template seen through subject variation (a smooth random elastic warp) and a
per-scan pose (random affine: rotation, anisotropic scale, shift), multiplied by a smooth bias field, with
Rician-like noise. "Patients" (CDR 0.5 or 1) get simulated atrophy before the warp, of one of two kinds
(`CohortConfig.atrophy_kind`):

- "darken" (the default; the demo's cohort): inside two ellipsoids around the left and right medial temporal
  lobes (hippocampus / amygdala area, MNI centres (+-28, -20, -14) mm), tissue is darkened towards CSF with a
  smooth edge. In sagittal slices the affected slices are those with |x| within `AtrophyRegion.band_mm`.
- "shape" (`ShapeAtrophy`): a change of shape, as OASIS-1 patients differ from controls: both hippocampi
  shrink (a local contracting warp) and both lateral ventricles enlarge (a local expanding warp), by a
  graded severity per participant (patients high, controls low: ageing); optionally a mild global
  enlargement of the central CSF spaces. Intensities are the template's, only moved.

Layout written (as the OASIS-1 discs unpack; the adapter reads it):
    <out>/disc1/OAS1_0001_MR1/PROCESSED/MPRAGE/SUBJ_111/OAS1_0001_MR1_mpr_n4_anon_sbj_111.{hdr,img}
        sagittal Analyze 7.5 as OASIS-1 writes it: orient 2, big-endian int16, voxel order A, S, L
        (analyze.py); the field of view is the template's, at `spacing_mm` (the real SUBJ_111 grid is
        256 x 256 x 160 at 1 mm)
    <out>/oasis_cross-sectional.csv   ID, M/F, Hand, Age, Educ, SES, MMSE, CDR, eTIV, nWBV, ASF, Delay
    <out>/cohort_truth.tsv            participant_id, session_id, group, atrophy (ground truth for checks);
                                      shape cohorts add each participant's severity
Some participants also get a reliability re-scan `_MR2` (new pose, bias and noise; same anatomy) whose
CSV row leaves the clinical fields blank, as the real file does.
"""
from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from adafocus.core.io import atomic_write_text
from adafocus.datasets.mri.analyze import write_oasis_analyze
from adafocus.datasets.mri.template import mni_template
from adafocus.datasets.mri.volume import Volume, sitk_to_volume
from scipy import ndimage

OASIS_CSV_NAME = "oasis_cross-sectional.csv"
TRUTH_NAME = "cohort_truth.tsv"
_OASIS_CSV_COLUMNS = ("ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF", "Delay")


@dataclass(frozen=True)
class AtrophyRegion:
    """Two mirror-image ellipsoids (MNI mm): centres (+-cx, cy, cz), semi-axes `radii_mm`."""

    centre_mm: tuple[float, float, float] = (28.0, -20.0, -14.0)
    radii_mm: tuple[float, float, float] = (10.0, 20.0, 12.0)

    @property
    def band_mm(self) -> tuple[float, float]:
        """|x| range (mm) of sagittal planes that cut the region."""
        return self.centre_mm[0] - self.radii_mm[0], self.centre_mm[0] + self.radii_mm[0]

    def weight(self, world_xyz: np.ndarray, edge_mm: float = 3.0) -> np.ndarray:
        """Soft membership in [0, 1] of world points [..., 3]: 1 inside, falling to 0 over ~`edge_mm`."""
        centre, radii = np.asarray(self.centre_mm), np.asarray(self.radii_mm)
        weights = []
        for side in (1.0, -1.0):
            c = centre * np.array([side, 1.0, 1.0])
            r = np.sqrt((((world_xyz - c) / radii) ** 2).sum(-1))  # 1 on the ellipsoid surface
            weights.append(np.clip((1.0 - r) * radii.min() / edge_mm + 0.5, 0.0, 1.0))
        return np.maximum(*weights)


ATROPHY_KINDS = ("darken", "shape")


@functools.lru_cache(maxsize=1)
def lateral_ventricle_push() -> tuple[np.ndarray, np.ndarray]:
    """Where the lateral ventricles of the MNI152 template are, as a field that points into them.

    The ventricles: the two largest connected components of dark voxels (< 0.4 of the maximum) at least 10 mm
    inside the brain in the box |x| < 30, -45 < y < 35, -5 < z < 35 mm of the nilearn MNI152 2009a template
    at 1 mm (about 6 ml each, centroids (+-11.5, -9.7, 15.9) mm; the next component is the third ventricle on
    the midline). Returns (the gradient of that mask smoothed with sigma 3 mm, scaled to a maximum length of 1,
    float32 [3, X, Y, Z] on a crop of the template grid; the crop's voxel -> world affine)."""
    template = sitk_to_volume(mni_template(1.0))
    array = template.array / float(template.array.max())
    world = world_grid(template)
    inside = ndimage.binary_erosion(ndimage.binary_fill_holes(array > 0.2), iterations=10)
    box = ((np.abs(world[..., 0]) < 30) & (world[..., 1] > -45) & (world[..., 1] < 35)
           & (world[..., 2] > -5) & (world[..., 2] < 35))
    labels, count = ndimage.label((array < 0.4) & inside & box)
    sizes = ndimage.sum(np.ones_like(labels), labels, range(1, count + 1))
    mask = np.isin(labels, np.argsort(sizes)[::-1][:2] + 1)
    lo = np.maximum(np.argwhere(mask).min(0) - 25, 0)
    hi = np.argwhere(mask).max(0) + 26
    smooth = ndimage.gaussian_filter(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32), 3.0)
    gradient = np.stack(np.gradient(smooth))
    gradient /= max(float(np.linalg.norm(gradient, axis=0).max()), 1e-8)
    affine = template.affine.copy()
    affine[:3, 3] = template.affine[:3, :3] @ lo + template.affine[:3, 3]
    return gradient.astype(np.float32), affine


@dataclass(frozen=True)
class ShapeAtrophy:
    """Shape-change atrophy: the anatomy at world point p is the template at p + u(p), with

        u(p) = severity * (a_h * sum_side g_side(p) (p - c_side) + b_v * v(p) + a_g * g_0(p) (p - c_0))

    - hippocampi: a Gaussian-weighted radial scaling about c = (+-28, -20, -14) mm (g = exp(-|(p - c)/sigma|^2
      / 2)); a_h > 0 samples from farther out, so the structure shrinks (near its centre by 1 / (1 + a_h) per
      axis). The centre is the medial temporal centre the darkening cohort uses; the AAL atlas's hippocampus
      centroids are about (+-27, -21, -10) mm (Tzourio-Mazoyer et al., NeuroImage 15:273-289, 2002; as cited in
      apps/runs/baselines.py; no atlas image ships offline with nilearn here).
    - lateral ventricles: v(p) is the field pointing into the template's lateral ventricles
      (`lateral_ventricle_push`, length <= 1), so b_v mm > 0 fills the space next to them with ventricle: the
      ventricles widen by up to b_v mm on every side (the template's are slits 4-8 mm wide: a young brain).
    - optional mild global variant: a_g < 0 enlarges everything about the midline point c_0 = (0, -9, 12) mm
      with a broad Gaussian (sigma `global_sigma_mm`), i.e. the central CSF spaces grow.

    Measured by warping their masks at severity 1 (tests/test_mri_cohort.py): hippocampus about 0.75 of the
    template's volume, lateral ventricles about 2x. OASIS-1 reports hippocampal volume loss of roughly 20-30%
    and ventricles 1.5-2x larger in very mild to mild AD than in controls of the same age. Severity is drawn
    per participant, uniformly in `patient_severity` or `control_severity` (ageing)."""

    hippocampus_mm: tuple[float, float, float] = (28.0, -20.0, -14.0)
    hippocampus_sigma_mm: tuple[float, float, float] = (6.0, 10.0, 6.0)
    hippocampus_shrink: float = 0.2       # a_h
    ventricle_widen_mm: float = 3.0       # b_v
    global_expand: float = 0.0            # -a_g; mild global variant, e.g. 0.05
    global_sigma_mm: float = 35.0
    patient_severity: tuple[float, float] = (0.6, 1.0)
    control_severity: tuple[float, float] = (0.0, 0.2)

    def displacement_mm(self, world_xyz: np.ndarray, severity: float) -> np.ndarray:
        """u(p) in mm, float32 [..., 3], for world points [..., 3] (see the class docstring)."""
        total = np.zeros(world_xyz.shape, dtype=np.float32)
        radial = [(np.asarray(self.hippocampus_mm) * np.array([side, 1.0, 1.0]), np.asarray(self.hippocampus_sigma_mm),
                   self.hippocampus_shrink) for side in (1.0, -1.0)]
        if self.global_expand:
            radial.append((np.array([0.0, -9.0, 12.0]), np.full(3, self.global_sigma_mm), -self.global_expand))
        for centre, sigma, strength in radial:
            offset = (world_xyz - centre).astype(np.float32)
            weight = np.exp(-0.5 * ((offset / sigma) ** 2).sum(-1))
            total += (severity * strength) * weight[..., None] * offset
        if self.ventricle_widen_mm:
            push, affine = lateral_ventricle_push()
            voxels = (world_xyz - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
            coords = np.moveaxis(voxels, -1, 0)
            for axis in range(3):
                total[..., axis] += (severity * self.ventricle_widen_mm) * ndimage.map_coordinates(
                    push[axis], coords, order=1, mode="constant", cval=0.0)
        return total

    @property
    def band_mm(self) -> tuple[float, float]:
        """|x| range (mm) of the sagittal planes where the warp moves anatomy by >= 1 mm at severity 1."""
        return _moved_band(self)


@functools.lru_cache(maxsize=8)
def _moved_band(atrophy: ShapeAtrophy) -> tuple[float, float]:
    axis = np.arange(0.0, 90.0, 1.0)
    y, z = np.meshgrid(np.arange(-110.0, 80.0, 2.0), np.arange(-70.0, 85.0, 2.0), indexing="ij")
    moved = [np.linalg.norm(atrophy.displacement_mm(np.stack([np.full_like(y, x), y, z], -1), 1.0), axis=-1).max()
             for x in axis]
    inside = axis[np.asarray(moved) >= 1.0]
    return float(inside.min()), float(inside.max())


def apply_shape_atrophy(template: Volume, atrophy: ShapeAtrophy, severity: float) -> Volume:
    """The template's anatomy changed in shape by `atrophy` at `severity` (same grid and affine), linear interpolation."""
    world = world_grid(template)
    source = world + atrophy.displacement_mm(world, severity)
    voxels = (source - template.affine[:3, 3]) @ np.linalg.inv(template.affine[:3, :3]).T
    warped = ndimage.map_coordinates(template.array, np.moveaxis(voxels, -1, 0), order=1, mode="constant", cval=0.0)
    return Volume(warped.astype(np.float32), template.affine)


@dataclass(frozen=True)
class CohortConfig:
    """Cohort size and the strength of each nuisance. spacing_mm: voxel size of the written scans."""

    n_participants: int = 30
    patient_fraction: float = 0.5
    n_repeat_scans: int = 3
    spacing_mm: float = 2.0
    atrophy: AtrophyRegion = field(default_factory=AtrophyRegion)
    atrophy_strength: float = 0.6     # fraction of tissue intensity removed at the region's core
    atrophy_kind: str = "darken"      # darken (AtrophyRegion, atrophy_strength) | shape (ShapeAtrophy)
    shape: ShapeAtrophy = field(default_factory=ShapeAtrophy)
    rotation_deg: float = 6.0
    scale: float = 0.05               # per-axis scale in [1 - scale, 1 + scale]
    shift_mm: float = 8.0
    elastic_mm: float = 2.0           # typical displacement of the anatomy warp
    elastic_smoothness_mm: float = 16.0
    bias_strength: float = 0.25       # log-field spans about +-this
    noise: float = 0.03               # noise SD as a fraction of the 99th intensity percentile
    seed: int = 0

    def __post_init__(self):
        if self.atrophy_kind not in ATROPHY_KINDS:
            raise ValueError(f"atrophy_kind={self.atrophy_kind!r}; choose one of {ATROPHY_KINDS}")

    @property
    def band_region(self) -> AtrophyRegion | ShapeAtrophy:
        """What `slices_in_band` reads for this cohort's atrophy (both have `band_mm`)."""
        return self.shape if self.atrophy_kind == "shape" else self.atrophy


def world_grid(volume: Volume) -> np.ndarray:
    """World (RAS mm) coordinates of every voxel centre: float [X, Y, Z, 3]."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), axis=-1)
    return index @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def apply_atrophy(template: Volume, region: AtrophyRegion, strength: float) -> Volume:
    """Darken the template inside `region` by up to `strength` (same grid and affine)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"atrophy strength must be in [0, 1], got {strength}")
    weight = region.weight(world_grid(template))
    return Volume((template.array * (1.0 - strength * weight)).astype(np.float32), template.affine)


def random_pose(rng: np.random.Generator, config: CohortConfig) -> np.ndarray:
    """A 4x4 world transform: rotation about a random axis, per-axis scale, shift."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-config.rotation_deg, config.rotation_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    pose = np.eye(4)
    pose[:3, :3] = rotation @ np.diag(rng.uniform(1 - config.scale, 1 + config.scale, size=3))
    pose[:3, 3] = rng.uniform(-config.shift_mm, config.shift_mm, size=3)
    return pose


def elastic_field(rng: np.random.Generator, shape: tuple[int, int, int], spacing_mm: float,
                  config: CohortConfig) -> np.ndarray:
    """Smooth random displacement in voxels, float32 [3, X, Y, Z], typical size elastic_mm / spacing."""
    sigma = config.elastic_smoothness_mm / spacing_mm
    field_ = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), sigma) for _ in range(3)])
    field_ *= (config.elastic_mm / spacing_mm) / max(float(field_.std()), 1e-8)
    return field_.astype(np.float32)


def smooth_bias(rng: np.random.Generator, volume: Volume, strength: float) -> np.ndarray:
    """A multiplicative bias field exp(quadratic polynomial of the normalised coordinates), [X, Y, Z]."""
    grids = np.ix_(*[np.linspace(-1, 1, n) for n in volume.shape])  # broadcast, not meshgrid: 10x faster
    terms = [*grids, *(g * h for i, g in enumerate(grids) for h in grids[i:])]
    coefficients = rng.normal(size=len(terms))
    log_field = sum(c * t for c, t in zip(coefficients, terms))
    log_field *= strength / max(float(np.abs(log_field).max()), 1e-8)
    return np.exp(log_field).astype(np.float32)


def simulate_scan(anatomy: Volume, displacement: np.ndarray, pose: np.ndarray, rng: np.random.Generator,
                  config: CohortConfig) -> Volume:
    """One scan of a subject: the anatomy (template space, maybe atrophied) warped by `displacement`
    (voxels, [3, X, Y, Z]) and placed in the scanner by `pose`; then bias field and noise.

    The scan uses the anatomy's grid; its affine is the anatomy's (RAS), and voxel v shows the anatomy at
    pose^-1(world(v)) + displacement(v). Returns intensities >= 0 (float32)."""
    to_anatomy_voxels = np.linalg.inv(anatomy.affine) @ np.linalg.inv(pose) @ anatomy.affine
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in anatomy.shape], indexing="ij"))
    coords = np.einsum("ij,j...->i...", to_anatomy_voxels[:3, :3].astype(np.float32), index)
    coords += to_anatomy_voxels[:3, 3, None, None, None].astype(np.float32) + displacement
    warped = ndimage.map_coordinates(anatomy.array, coords, order=1, mode="constant", cval=0.0)
    return Volume(scanner_nuisance(Volume(warped, anatomy.affine), rng, config), anatomy.affine)


def scanner_nuisance(scan: Volume, rng: np.random.Generator, config: CohortConfig) -> np.ndarray:
    """The scanner's part of a scan: a smooth bias field, then Rician-like noise; float32 [X, Y, Z] >= 0."""
    biased = scan.array * smooth_bias(rng, scan, config.bias_strength)
    sigma = config.noise * float(np.percentile(biased, 99))
    noisy = np.hypot(biased + rng.normal(0, sigma, biased.shape), rng.normal(0, sigma, biased.shape))
    return noisy.astype(np.float32)


def write_analyze_atomic(hdr_path: Path, volume: Volume) -> None:
    """Write a RAS volume as OASIS-1 ships its images (analyze.write_oasis_analyze): sagittal Analyze 7.5,
    orient 2, big-endian int16, voxel order A, S, L (i posterior -> anterior, j inferior -> superior,
    k right -> left), no .mat file. Intensities are scaled to 0..1000. The .img goes into place before the
    .hdr, so a visible .hdr always has its complete image."""
    scaled = volume.array / max(float(volume.array.max()), 1e-8) * 1000.0
    write_oasis_analyze(hdr_path, scaled, tuple(float(s) for s in np.linalg.norm(volume.affine[:3, :3], axis=0)))


def session_image_path(raw_dir: Path, participant: str, session: str) -> Path:
    name = f"{participant}_{session}"
    return (raw_dir / "disc1" / name / "PROCESSED" / "MPRAGE" / "SUBJ_111" / f"{name}_mpr_n4_anon_sbj_111.hdr")


def _csv_text(columns: tuple[str, ...], rows: list[dict], delimiter: str = ",") -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_oasis_cohort(out_dir: str | Path, config: CohortConfig = CohortConfig()) -> Path:
    """Generate the cohort into `out_dir` (layout in the module docstring). Returns the metadata CSV path.

    Participants OAS1_0001.. alternate deterministically between control and patient groups so the
    class balance is exact (round(n * patient_fraction) patients); the first `n_repeat_scans` of each
    group in turn get an MR2. Existing scans are kept (re-running resumes)."""
    if config.n_participants < 2 or not 0 < config.patient_fraction < 1:
        raise ValueError("a cohort needs n_participants >= 2 and 0 < patient_fraction < 1")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(config.seed)
    template = sitk_to_volume(mni_template(config.spacing_mm))
    shape = config.atrophy_kind == "shape"
    atrophied = None if shape else apply_atrophy(template, config.atrophy, config.atrophy_strength)
    n_patients = round(config.n_participants * config.patient_fraction)
    is_patient = np.zeros(config.n_participants, dtype=bool)
    is_patient[rng.permutation(config.n_participants)[:n_patients]] = True
    repeats = set(rng.permutation(config.n_participants)[:config.n_repeat_scans].tolist())

    csv_rows, truth_rows = [], []
    for k in range(config.n_participants):
        participant = f"OAS1_{k + 1:04d}"
        subject_rng = np.random.default_rng([config.seed, k])
        displacement = elastic_field(subject_rng, template.shape, config.spacing_mm, config)
        cdr = float(subject_rng.choice([0.5, 1.0])) if is_patient[k] else 0.0
        age = int(subject_rng.integers(62, 90))
        sex = str(subject_rng.choice(["M", "F"]))
        mmse = int(subject_rng.integers(18, 26)) if is_patient[k] else int(subject_rng.integers(27, 31))
        severity = (float(subject_rng.uniform(*(config.shape.patient_severity if is_patient[k]
                                                else config.shape.control_severity))) if shape else None)
        sessions = ["MR1", "MR2"] if k in repeats else ["MR1"]
        for session in sessions:
            path = session_image_path(out_dir, participant, session)
            if not path.exists():
                scan_rng = np.random.default_rng([config.seed, k, int(session.removeprefix("MR"))])
                anatomy = (apply_shape_atrophy(template, config.shape, severity) if shape
                           else atrophied if is_patient[k] else template)
                scan = simulate_scan(anatomy, displacement, random_pose(scan_rng, config), scan_rng, config)
                write_analyze_atomic(path, scan)
            clinical = session == "MR1"  # OASIS leaves the re-scan row's clinical fields blank
            csv_rows.append({"ID": f"{participant}_{session}", "M/F": sex, "Hand": "R", "Age": age,
                             "Educ": 3 if clinical else "", "SES": 2 if clinical else "",
                             "MMSE": mmse if clinical else "", "CDR": cdr if clinical else "",
                             "eTIV": 1500, "nWBV": 0.75, "ASF": 1.17, "Delay": "" if clinical else 30})
            truth_rows.append({"participant_id": participant, "session_id": f"ses-{session}",
                               "group": "AD" if is_patient[k] else "CN", "atrophy": int(is_patient[k]),
                               **({"severity": round(severity, 4)} if shape else {})})
    truth_columns = ("participant_id", "session_id", "group", "atrophy", *(("severity",) if shape else ()))
    atomic_write_text(out_dir / TRUTH_NAME, _csv_text(truth_columns, truth_rows, "\t"))
    csv_path = out_dir / OASIS_CSV_NAME
    atomic_write_text(csv_path, _csv_text(_OASIS_CSV_COLUMNS, csv_rows))
    return csv_path


def slices_in_band(slice_indices: np.ndarray, affine: np.ndarray, region: AtrophyRegion | ShapeAtrophy,
                   slice_axis: int = 0) -> np.ndarray:
    """For sagittal slice indices of a preprocessed (MNI-space, RAS) volume: True where the plane's |x|
    lies inside the region's band. slice_indices: int array of any shape -> bool array of that shape."""
    if slice_axis != 0:
        raise ValueError("the atrophy band is defined for sagittal slices (axis 0) only")
    x_mm = affine[0, 0] * np.asarray(slice_indices, dtype=float) + affine[0, 3]
    low, high = region.band_mm
    return (np.abs(x_mm) >= low) & (np.abs(x_mm) <= high)
