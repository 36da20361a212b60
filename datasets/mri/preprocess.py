"""t1-linear-like preprocessing of a scan manifest into a cache of MNI-aligned, cropped, normalised volumes.

The pipeline is a list of small named steps (MONAI / TorchIO style), each a callable with a `name`:

    LoadImage -> OrientationRAS -> N4BiasCorrection -> RegisterToMNI -> CropToBox -> NormaliseIntensity
    -> SaveNifti -> SaveQCPng -> SaveQCScores

Like Clinica's t1-linear: N4 bias-field correction, affine registration to an MNI152 2009 symmetric template,
then a fixed crop (169 x 208 x 179 mm, ClinicaDL's box), no skull stripping. Differences: SimpleITK instead
of ANTs (pip-installable), and the template is the one nilearn ships, ICBM 2009a symmetric
(`MNI152NLin2009aSym`; Clinica uses 2009c), found in nilearn's package data without any download.
Intensities end in [0, 1] (percentile min-max, the normalisation ClinicaDL applies at training time).

Cache layout (BIDS/CAPS-like): `<out>/sub-<pid>/ses-<sid>/t1_linear/
sub-<pid>_ses-<sid>_space-MNI152NLin2009aSym_desc-Crop_res-1x1x1_T1w.nii.gz` plus `..._qc.png` (three
mid-planes) and `..._qc.json` (registration QC, qc.py; copied into the manifest's qc_* columns), where
<pid>/<sid> are the manifest ids with non-alphanumerics removed; `<out>/manifest.tsv`.
Analyze files are read with FreeSurfer's orientation rules (analyze.py), not nibabel's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from adafocus.core.io import atomic_write_json
from adafocus.datasets.mri.adapters import build_manifest
from adafocus.datasets.mri.manifest import (
    MANIFEST_NAME,
    STATUS_OK,
    ManifestRow,
    carry_over_finished,
    error_status,
    read_manifest,
    write_manifest,
)
from adafocus.datasets.mri.qc import check_registration, read_qc_json, write_qc_json
from adafocus.datasets.mri.slices import PLANES, plane_frame
from adafocus.datasets.mri.template import (  # noqa: F401 - re-exported: preprocess.mni_template etc.
    MNI_TEMPLATE_FILE,
    TEMPLATE_SPACE,
    mni_template,
    mni_template_path,
)
from adafocus.datasets.mri.volume import ScanError, Volume, load_volume, sitk_to_volume, volume_to_sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from nibabel import orientations
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

CLINICADL_CROP_MM = (169.0, 208.0, 179.0)


@dataclass(frozen=True)
class T1LinearConfig:
    """Pipeline settings. spacing_mm: output voxel size; crop_mm: output box (mm) centred on the template
    grid; registration_spacing_mm: template resolution the affine is optimised on (coarser = faster);
    n4_shrink_factor: N4 fits the bias field on an image shrunk this much, then applies it at full res;
    seed: metric sampling seed (registration is deterministic for a given seed and number of ITK threads)."""

    spacing_mm: float = 1.0
    crop_mm: tuple[float, float, float] = CLINICADL_CROP_MM
    registration_spacing_mm: float = 2.0
    n4_shrink_factor: int = 4
    seed: int = 0


T1_LINEAR_CONFIG_NAME = "t1_linear.json"


def write_t1_linear_config(cache_dir: str | Path, config: T1LinearConfig) -> None:
    """Record a cache's settings beside its manifest, so a model trained on it knows how to preprocess new
    scans the same way (the model card copies them)."""
    atomic_write_json(Path(cache_dir) / T1_LINEAR_CONFIG_NAME, dataclasses.asdict(config))


def read_t1_linear_config(cache_dir: str | Path) -> dict:
    """The settings a cache was made with (the defaults for caches written before this file existed)."""
    path = Path(cache_dir) / T1_LINEAR_CONFIG_NAME
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return dataclasses.asdict(T1LinearConfig())


def t1_linear_config_from(settings: dict | None) -> T1LinearConfig:
    """A T1LinearConfig from a model card's "t1_linear" entry (unknown keys ignored; None -> defaults)."""
    fields = {f.name for f in dataclasses.fields(T1LinearConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in (settings or {}).items() if k in fields}
    return T1LinearConfig(**values)


class Step(Protocol):
    name: ClassVar[str]

    def __call__(self, item): ...


# --------------------------------------------------------------------------------------------------- steps
@dataclass(frozen=True)
class LoadImage:
    """Path (NIfTI, Analyze .hdr/.img, DICOM folder or file) -> validated `Volume` (see volume.py)."""

    name: ClassVar[str] = "load"

    def __call__(self, path: str | Path) -> Volume:
        return load_volume(path)


@dataclass(frozen=True)
class OrientationRAS:
    """Reorder / flip array axes so the array is RAS+ (closest canonical, no resampling)."""

    name: ClassVar[str] = "orientation"

    def __call__(self, volume: Volume) -> Volume:
        current = orientations.io_orientation(volume.affine)
        transform = orientations.ornt_transform(current, orientations.axcodes2ornt("RAS"))
        array = orientations.apply_orientation(volume.array, transform)
        affine = volume.affine @ orientations.inv_ornt_aff(transform, volume.shape)
        return dataclasses.replace(volume, array=np.ascontiguousarray(array, dtype=np.float32), affine=affine)


@dataclass(frozen=True)
class N4BiasCorrection:
    """SimpleITK N4 fitted on a shrunk image inside an Otsu head mask, the bias field applied at full res."""

    shrink_factor: int = 4
    iterations: tuple[int, ...] = (50, 50, 30)
    name: ClassVar[str] = "n4"

    def __call__(self, volume: Volume) -> Volume:
        image = volume_to_sitk(Volume(np.maximum(volume.array, 0.0), volume.affine))
        mask = sitk.OtsuThreshold(image, 0, 1, 200)
        factors = [max(1, min(self.shrink_factor, n // 8)) for n in image.GetSize()]
        corrector = sitk.N4BiasFieldCorrectionImageFilter()
        corrector.SetMaximumNumberOfIterations(list(self.iterations))
        corrector.Execute(sitk.Shrink(image, factors), sitk.Shrink(mask, factors))
        bias = sitk.Exp(corrector.GetLogBiasFieldAsImage(image))
        return dataclasses.replace(volume, array=sitk_to_volume(image / bias).array)


def registration_shrink_factors(registration_spacing_mm: float) -> list[int]:
    """Pyramid levels of at most 8 mm: 2 mm -> [4, 2, 1], 3-4 mm -> [2, 1], coarser -> [1]."""
    return [f for f in (4, 2) if f * registration_spacing_mm <= 8.0] + [1]


def register_affine(moving: sitk.Image, fixed: sitk.Image, seed: int) -> sitk.Transform:
    """Affine moving -> fixed: moments initialisation, then multi-resolution Mattes MI gradient descent."""
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # SimpleITK reads seed 0 as "seed from the wall clock" (sitkWallClock); shift so that every seed is fixed.
    method.SetMetricSamplingPercentage(0.25, seed + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=200,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    factors = registration_shrink_factors(fixed.GetSpacing()[0])
    method.SetShrinkFactorsPerLevel(factors)
    method.SetSmoothingSigmasPerLevel([f / 2 if f > 1 else 0 for f in factors])
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


@dataclass(frozen=True)
class RegisterToMNI:
    """Affine registration to the MNI template, output resampled (linear) onto the template grid at
    `spacing_mm`; voxels outside the scan's field of view are 0. With `quality_check` (and a loaded scan,
    i.e. `native` set) the registration's QC (qc.py: scores, flag, reason) goes into native["qc"]."""

    spacing_mm: float = 1.0
    registration_spacing_mm: float = 2.0
    seed: int = 0
    quality_check: bool = True
    name: ClassVar[str] = "register"

    def __call__(self, volume: Volume) -> Volume:
        refuse_too_small(volume)
        moving = volume_to_sitk(volume)
        transform = register_affine(moving, mni_template(self.registration_spacing_mm), self.seed)
        grid = mni_template(self.spacing_mm)
        registered = sitk_to_volume(sitk.Resample(moving, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        if volume.native is None:
            return Volume(registered.array, registered.affine, None)
        to_native = ras_matrix_of(transform)
        native = {**volume.native, "mni_to_native_world": to_native}
        if self.quality_check:
            native["qc"] = check_registration(moving, transform, registered.array, self.spacing_mm,
                                              np.asarray(to_native), volume.native.get("warnings", ()))
        return Volume(registered.array, registered.affine, native)


MIN_REGISTRATION_MM = 40.0
MIN_REGISTRATION_VOXELS = 8


def refuse_too_small(volume: Volume) -> None:
    """ScanError for a field of view too small to register to a head template (a localiser, a thin slab)."""
    extent = [n * s for n, s in zip(volume.shape, volume.spacing)]
    if min(extent) < MIN_REGISTRATION_MM or min(volume.shape) < MIN_REGISTRATION_VOXELS:
        raise ScanError(f"scan too small to register: {' x '.join(str(n) for n in volume.shape)} voxels, "
                        f"{' x '.join(f'{e:.0f}' for e in extent)} mm; need at least {MIN_REGISTRATION_VOXELS} "
                        f"voxels and {MIN_REGISTRATION_MM:.0f} mm along each axis (a whole-head T1)")


def ras_matrix_of(transform: sitk.Transform) -> list[list[float]]:
    """The 4x4 RAS mm -> RAS mm matrix of an affine SimpleITK transform (which maps LPS points)."""
    flip = np.array([-1.0, -1.0, 1.0])
    points = np.vstack([np.zeros(3), np.eye(3)])
    mapped = np.array([flip * np.asarray(transform.TransformPoint((flip * p).tolist())) for p in points])
    matrix = np.eye(4)
    matrix[:3, 3] = mapped[0]
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T
    return matrix.tolist()


@dataclass(frozen=True)
class CropToBox:
    """Centre crop (or zero pad) to a fixed box given in mm, e.g. ClinicaDL's 169 x 208 x 179 at 1 mm."""

    box_mm: tuple[float, float, float] = CLINICADL_CROP_MM
    name: ClassVar[str] = "crop"

    def __call__(self, volume: Volume) -> Volume:
        target = [max(1, round(b / s)) for b, s in zip(self.box_mm, volume.spacing)]
        starts = [(n - t) // 2 for n, t in zip(volume.shape, target)]  # negative start -> padding
        out = np.zeros(target, dtype=np.float32)
        src = tuple(slice(max(s, 0), min(s + t, n)) for s, t, n in zip(starts, target, volume.shape))
        dst = tuple(slice(max(-s, 0), max(-s, 0) + (sl.stop - sl.start)) for s, sl in zip(starts, src))
        out[dst] = volume.array[src]
        shift = np.eye(4)
        shift[:3, 3] = starts
        return dataclasses.replace(volume, array=out, affine=volume.affine @ shift)


@dataclass(frozen=True)
class NormaliseIntensity:
    """Min-max to [0, 1] between robust percentiles of the non-zero voxels (values outside are clipped)."""

    percentiles: tuple[float, float] = (0.5, 99.5)
    name: ClassVar[str] = "normalise"

    def __call__(self, volume: Volume) -> Volume:
        foreground = volume.array[volume.array > 0]
        if foreground.size == 0:
            raise ScanError("empty image after registration: no positive voxel inside the MNI box")
        low, high = np.percentile(foreground, self.percentiles)
        if high <= low:
            raise ScanError("empty image after registration: constant intensity inside the MNI box")
        scaled = np.clip((volume.array - low) / (high - low), 0.0, 1.0)
        return dataclasses.replace(volume, array=scaled.astype(np.float32))


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temp file next to `path` (same suffixes), then os.replace it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class SaveNifti:
    """Write the volume as float32 NIfTI-1 (gzip) atomically; passes the volume through."""

    path: Path
    name: ClassVar[str] = "save"

    def __call__(self, volume: Volume) -> Volume:
        image = nib.Nifti1Image(volume.array, volume.affine)
        image.header.set_xyzt_units("mm")
        image.set_qform(volume.affine, code="mni")
        image.set_sform(volume.affine, code="mni")
        _atomic_write(Path(self.path), lambda tmp: nib.save(image, str(tmp)))
        if volume.native is not None and "mni_to_native_world" in volume.native:
            atomic_write_json(native_transform_path(self.path), native_geometry(volume))
        return volume


def native_transform_path(nifti_path: str | Path) -> Path:
    """The JSON beside a preprocessed NIfTI that maps it back to the scan as loaded (`native_geometry`)."""
    path = Path(nifti_path)
    return path.with_name(path.name.removesuffix(".gz").removesuffix(".nii") + "_native.json")


def native_geometry(volume: Volume) -> dict:
    """Preprocessed voxel -> MNI mm ("preprocessed_affine") and -> voxel of the source file
    ("preprocessed_to_native_voxels", through the inverse of the registration), plus the source's grid."""
    native_affine = np.asarray(volume.native["affine"], dtype=float)
    to_native_world = np.asarray(volume.native["mni_to_native_world"], dtype=float)
    to_voxels = np.linalg.inv(native_affine) @ to_native_world @ volume.affine
    return {"preprocessed_affine": np.asarray(volume.affine).tolist(), "native_affine": native_affine.tolist(),
            "native_shape": [int(n) for n in volume.native["shape"]],
            "mni_to_native_world": to_native_world.tolist(), "preprocessed_to_native_voxels": to_voxels.tolist()}


def read_native_geometry(nifti_path: str | Path) -> dict | None:
    """`native_geometry` saved beside a preprocessed scan, or None (caches written before it existed)."""
    path = native_transform_path(nifti_path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@dataclass(frozen=True)
class SaveQCPng:
    """Write a PNG of the three mid-planes (display orientation of slices.py) atomically; passes through."""

    path: Path
    name: ClassVar[str] = "qc"

    def __call__(self, volume: Volume) -> Volume:
        figure = Figure(figsize=(9, 3.4), dpi=100)
        FigureCanvasAgg(figure)
        for k, plane in enumerate(PLANES):
            axis_index = PLANES[plane][0]
            middle = volume.shape[axis_index] // 2
            ax = figure.add_subplot(1, 3, k + 1)
            ax.imshow(
                plane_frame(volume.array, plane, middle),
                cmap="gray",
                vmin=0,
                vmax=1,
                aspect=_display_aspect(volume.spacing, plane),
            )
            ax.set_title(f"{plane} {'XYZ'[axis_index]}={middle}", fontsize=9)
            ax.set_axis_off()
        figure.tight_layout()
        _atomic_write(Path(self.path), lambda tmp: figure.savefig(tmp, format="png"))
        return volume


@dataclass(frozen=True)
class SaveQCScores:
    """Write the registration QC (native["qc"], see qc.py) as `<stem>_qc.json` beside `nifti_path`, atomically;
    passes the volume through (nothing is written when the registration recorded no QC)."""

    nifti_path: Path
    name: ClassVar[str] = "qc-scores"

    def __call__(self, volume: Volume) -> Volume:
        result = None if volume.native is None else volume.native.get("qc")
        if result is not None:
            write_qc_json(self.nifti_path, result)
        return volume


def _display_aspect(spacing: tuple[float, float, float], plane: str) -> float:
    _, row_axis, col_axis = PLANES[plane]
    return spacing[row_axis] / spacing[col_axis]


# ------------------------------------------------------------------------------------------------ pipeline
def t1_linear_pipeline(
    nifti_path: Path, qc_path: Path, config: T1LinearConfig = T1LinearConfig()
) -> list[Step]:
    """The step list for one scan: source path in, preprocessed `Volume` out (written to both paths)."""
    return [
        LoadImage(),
        OrientationRAS(),
        N4BiasCorrection(shrink_factor=config.n4_shrink_factor),
        RegisterToMNI(config.spacing_mm, config.registration_spacing_mm, config.seed),
        CropToBox(config.crop_mm),
        NormaliseIntensity(),
        SaveNifti(nifti_path),
        SaveQCPng(qc_path),
        SaveQCScores(nifti_path),
    ]


def run_pipeline(steps: list[Step], item):
    """Feed `item` through the steps; any failure becomes ScanError("<step name>: <reason>")."""
    for step in steps:
        try:
            item = step(item)
        except ScanError as exc:
            raise ScanError(f"{step.name}: {exc}") from exc
        except Exception as exc:
            detail = str(exc).strip().splitlines()
            raise ScanError(f"{step.name}: {type(exc).__name__}: {detail[0] if detail else ''}") from exc
    return item


def _id_label(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "", text)


def cache_paths(
    out_dir: str | Path, participant_id: str, session_id: str, spacing_mm: float = 1.0
) -> tuple[Path, Path]:
    """(NIfTI path, QC PNG path) of a scan in the cache tree (see module docstring)."""
    sub = _id_label(participant_id)
    ses = _id_label(session_id.removeprefix("ses-"))
    if not sub or not ses:
        raise ValueError(f"cannot name cache files for participant {participant_id!r} session {session_id!r}")
    res = f"{spacing_mm:g}".replace(".", "p")
    stem = f"sub-{sub}_ses-{ses}_space-{TEMPLATE_SPACE}_desc-Crop_res-{res}x{res}x{res}_T1w"
    folder = Path(out_dir) / f"sub-{sub}" / f"ses-{ses}" / "t1_linear"
    return folder / f"{stem}.nii.gz", folder / f"{stem}_qc.png"


def preprocess_scan(source: Path, nifti_path: Path, qc_path: Path, config: T1LinearConfig) -> str:
    """Run the pipeline on one scan; returns "ok" or "error: <step>: <reason>" (never raises Exception)."""
    try:
        run_pipeline(t1_linear_pipeline(nifti_path, qc_path, config), source)
    except ScanError as exc:
        return error_status(str(exc))
    return STATUS_OK


def needs_preprocessing(row: ManifestRow) -> bool:
    """Usable rows not already done (status ok with the cached file present)."""
    if row.excluded or row.source_path is None:
        return False
    return not (
        row.status == STATUS_OK and row.preprocessed_path is not None and row.preprocessed_path.exists()
    )


def _limit_worker_threads(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


# {manifest row index: preprocess_scan arguments} and a worker count -> (row index, status) as each scan ends
ScanExecutor = Callable[[dict[int, tuple], int], Iterator[tuple[int, str]]]


def preprocess_manifest(
    manifest: list[ManifestRow],
    out_dir: str | Path,
    *,
    workers: int = 2,
    progress: bool = True,
    config: T1LinearConfig = T1LinearConfig(),
    executor: ScanExecutor | None = None,
) -> list[ManifestRow]:
    """Preprocess every usable, unfinished row into `out_dir`; returns the updated rows.

    `out_dir/manifest.tsv` is rewritten atomically after every finished scan, so a killed run loses only the
    scans in flight and a re-run skips finished ones. Failures are recorded in `status`, never raised.
    The scans run through `executor` (default `local_scan_executor`: `workers` processes on this machine;
    `adafocus preprocess --ray` passes one that runs them as Ray tasks).
    """
    out_dir = Path(out_dir).absolute()
    manifest_path = out_dir / MANIFEST_NAME
    rows = list(manifest)
    todo = [i for i, row in enumerate(rows) if needs_preprocessing(row)]
    write_manifest(rows, manifest_path)
    write_t1_linear_config(out_dir, config)
    log.info(
        "t1-linear: %d scans to preprocess, %d already done",
        len(todo),
        sum(not r.excluded for r in rows) - len(todo),
    )
    jobs = {
        i: (
            rows[i].source_path,
            *cache_paths(out_dir, rows[i].participant_id, rows[i].session_id, config.spacing_mm),
            config,
        )
        for i in todo
    }

    def finish(i: int, status: str) -> None:
        qc = read_qc_json(jobs[i][1]) if status == STATUS_OK else None
        rows[i] = rows[i].with_status(status, jobs[i][1] if status == STATUS_OK else None).with_qc(
            None if qc is None else qc.to_dict())
        write_manifest(rows, manifest_path)
        if status != STATUS_OK:
            log.warning("%s %s: %s", rows[i].participant_id, rows[i].session_id, status)
        elif qc is not None and qc.flag != "pass":
            log.warning("%s %s: QC %s: %s", rows[i].participant_id, rows[i].session_id, qc.flag, qc.reason)

    with tqdm(total=len(todo), disable=not progress, unit="scan", desc="t1-linear") as bar:
        for i, status in (executor or local_scan_executor)(jobs, workers):
            finish(i, status)
            bar.update()
    return rows


def local_scan_executor(jobs: dict[int, tuple], workers: int) -> Iterator[tuple[int, str]]:
    """Run `preprocess_scan` on each job: in this process when workers <= 1, else in a ProcessPoolExecutor
    (spawned processes, SimpleITK threads split between them); yields (row index, status) as scans finish."""
    if workers <= 1 or len(jobs) <= 1:
        for i, job in jobs.items():
            yield i, preprocess_scan(*job)
        return
    n_workers = min(workers, len(jobs))
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    with ProcessPoolExecutor(
        n_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_limit_worker_threads,
        initargs=(threads,),
    ) as pool:
        futures = {pool.submit(preprocess_scan, *job): i for i, job in jobs.items()}
        try:
            for future in as_completed(futures):
                try:
                    status = future.result()
                except Exception as exc:  # noqa: BLE001 - the worker died (e.g. OOM); record it, keep going
                    status = error_status(f"worker crashed: {type(exc).__name__}: {exc}")
                yield futures[future], status
        except BaseException:  # includes the caller stopping early (GeneratorExit)
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def run_preprocess(
    dataset: str,
    raw_dir: str | Path,
    metadata_csv: str | Path | None,
    out_dir: str | Path,
    *,
    classes: tuple[str, ...] | None = None,
    diagnosis_column: str = "diagnosis",
    workers: int = 2,
    progress: bool = True,
    config: T1LinearConfig = T1LinearConfig(),
    executor: ScanExecutor | None = None,
) -> Path:
    """Build the `dataset` manifest ("adni" / "oasis" / "ppmi" / "bids") and preprocess it into `out_dir`.

    Re-running on the same folders resumes: scans finished by an earlier run (same participant, session and
    source file) are kept. Returns the path of `out_dir/manifest.tsv`. `executor`: see preprocess_manifest.
    """
    out_dir = Path(out_dir).absolute()
    rows = build_manifest(dataset, raw_dir, metadata_csv, classes=classes, diagnosis_column=diagnosis_column)
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.exists():
        rows = carry_over_finished(rows, read_manifest(manifest_path))
    preprocess_manifest(rows, out_dir, workers=workers, progress=progress, config=config, executor=executor)
    return manifest_path


# ---------------------------------------------------------------------------------------------- synthetic
def synthetic_scan(
    rng: np.random.Generator,
    *,
    spacing_mm: float = 1.0,
    shift_mm: float = 10.0,
    rotation_deg: float = 8.0,
    bias_strength: float = 0.3,
) -> Volume:
    """A realistic test scan: the MNI template at `spacing_mm`, moved in world space by a rigid transform
    (random axis rotation of `rotation_deg`, translation of norm `shift_mm`) and multiplied by a smooth
    bias field exp(linear ramp) spanning +-`bias_strength` across the field of view."""
    template = sitk_to_volume(mni_template(spacing_mm))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rotation_deg)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rigid = np.eye(4)
    rigid[:3, :3] = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    direction = rng.normal(size=3)
    rigid[:3, 3] = shift_mm * direction / np.linalg.norm(direction)
    ramps = np.meshgrid(*[np.linspace(-1, 1, n) for n in template.shape], indexing="ij")
    weights = rng.normal(size=3)
    log_field = sum(w * r for w, r in zip(weights / np.abs(weights).sum(), ramps)) * bias_strength
    return Volume((template.array * np.exp(log_field)).astype(np.float32), rigid @ template.affine)


def benchmark_preprocess(
    n_scans: int = 3,
    *,
    config: T1LinearConfig = T1LinearConfig(),
    input_spacing_mm: float = 1.2,
    seed: int = 0,
) -> float:
    """Mean wall-clock seconds per scan of the full pipeline (in this process) on `n_scans` synthetic
    scans at `input_spacing_mm` (a typical 1.2 mm sagittal MPRAGE resolution)."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="adafocus-bench-") as tmp:
        sources = []
        for k in range(n_scans):
            source = Path(tmp) / f"scan{k}.nii.gz"
            SaveNifti(source)(synthetic_scan(rng, spacing_mm=input_spacing_mm))
            sources.append(source)
        start = time.perf_counter()
        for k, source in enumerate(sources):
            status = preprocess_scan(source, Path(tmp) / f"out{k}.nii.gz", Path(tmp) / f"out{k}.png", config)
            if status != STATUS_OK:
                raise RuntimeError(f"benchmark scan {k} failed: {status}")
        return (time.perf_counter() - start) / max(n_scans, 1)
