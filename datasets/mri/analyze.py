"""Analyze 7.5 (.hdr/.img) read as FreeSurfer reads it, and written as OASIS-1 ships it.

Analyze 7.5 has no affine. nibabel (`nib.load`) and SimpleITK both ignore the header's `hist.orient`
code and give every Analyze file a transverse layout (nibabel: voxel axes L, A, S; ITK: L, P, S), so a
sagittal OASIS-1 scan loaded with either lies on its side, rotated 90 degrees. This reader follows
FreeSurfer's `analyzeRead` (freesurfer/freesurfer: utils/mriio.cpp), in this order:

1. An SPM `.mat` file beside the image (same stem) takes precedence: its `mat` matrix (SPM2 and later;
   else the SPM99 `M`, taken as stored) maps 1-based voxel indices to world mm, and is shifted to 0-based
   indices (FreeSurfer: `MtxCRS1toCRS0`).
2. Otherwise `hist.orient` (one byte) names the voxel order. FreeSurfer's table, voxel axes i, j, k:

       code  Mayo name              i     j     k     axis codes (the way each axis grows)
       0     transverse unflipped   R-L   P-A   I-S   L A S
       1     coronal unflipped      R-L   I-S   P-A   L S A
       2     sagittal unflipped     P-A   I-S   R-L   A S L
       3     transverse flipped     R-L   A-P   I-S   L P S
       4     coronal flipped        R-L   S-I   P-A   L I A
       5     sagittal flipped       P-A   S-I   R-L   A I L

   Code -1 (255 as an unsigned byte) is "unknown": FreeSurfer assumes transverse flipped (L P S) and marks
   the geometry as not trustworthy; here it is read the same way and a warning is recorded. Any other code
   is refused (ScanError) rather than guessed.
3. Voxel sizes are |pixdim[1..3]| (FreeSurfer takes the absolute value; a zero size is refused).
4. The origin: SPM's `originator` (the first three int16 of `hist.originator`, 1-based voxel index of the
   world origin) where it is set and plausible (nibabel's Spm99 rule: not all zero, each in (-dim, 2 dim));
   otherwise FreeSurfer's convention, world (0, 0, 0) at the centre of the field of view, voxel
   (dim[1]/2, dim[2]/2, dim[3]/2).

Byte order comes from the header itself (`sizeof_hdr` must read 348; OASIS-1 files are big-endian),
data type and `vox_offset` from the header, and SPM's scale factor (`funused1`) is applied when set.
A `.hdr` whose magic says "ni1" is a two-file NIfTI and is left to the NIfTI reader, as FreeSurfer does.

OASIS-1 (oasis-brains.org, OASIS-1 fact sheet; Marcus et al. 2007): every image is sagittal with
orient = 2 and no `.mat` file, big-endian int16, voxel axes i = posterior -> anterior, j = inferior ->
superior, k = right -> left (A, S, L). RAW `OAS1_xxxx_MRy_mpr-N_anon` scans are 256 x 256 x 128 voxels at
1 x 1 x 1.25 mm; the averaged `PROCESSED/MPRAGE/SUBJ_111/*_sbj_111` image is 256 x 256 x 160 at 1 mm.
Clinica's OASIS converter hard-codes the SUBJ_111 affine [[0, 0, -1, 80], [1, 0, 0, -128],
[0, 1, 0, -128]] "from images converted with FreeSurfer" (aramis-lab/clinica:
clinica/converters/oasis_to_bids/_utils.py, `get_image_with_good_orientation`); `read_analyze` gives
exactly that affine for a SUBJ_111 header (orient 2, no originator, no .mat).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nibabel.spm99analyze import Spm99AnalyzeHeader

log = logging.getLogger(__name__)

ANALYZE_HEADER_BYTES = 348
# hist.orient -> RAS direction of voxel axes i, j, k (FreeSurfer analyzeRead; see the module docstring)
ORIENT_AXES: dict[int, str] = {0: "LAS", 1: "LSA", 2: "ASL", 3: "LPS", 4: "LIA", 5: "AIL"}
ORIENT_NAMES: dict[int, str] = {0: "transverse unflipped", 1: "coronal unflipped", 2: "sagittal unflipped",
                                3: "transverse flipped", 4: "coronal flipped", 5: "sagittal flipped"}
UNKNOWN_ORIENT = 255  # the byte -1: FreeSurfer assumes transverse flipped
OASIS_ORIENT = 2
OASIS_RAW_SHAPE = (256, 256, 128)
OASIS_RAW_VOXEL_MM = (1.0, 1.0, 1.25)
OASIS_SUBJ111_SHAPE = (256, 256, 160)
OASIS_SUBJ111_VOXEL_MM = (1.0, 1.0, 1.0)
_UNIT = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


class AnalyzeError(ValueError):
    """An Analyze pair that cannot be read; the message says why (volume.py turns it into a ScanError)."""


@dataclass(frozen=True)
class AnalyzeScan:
    """An Analyze image as read: `array` [i, j, k] float32 in the file's voxel order, `affine` voxel -> RAS mm,
    how the affine was found (`geometry`: "mat" or "orient <code> (<name>)"), and `warnings` for the
    manifest (an unknown orient code)."""

    array: np.ndarray
    affine: np.ndarray
    geometry: str
    endianness: str
    warnings: tuple[str, ...] = field(default=())


def pair_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """(.hdr, .img, .mat) paths of an Analyze pair given either file."""
    path = Path(path)
    stem = path.with_suffix("")
    hdr_suffix, img_suffix = (".HDR", ".IMG") if path.suffix.isupper() else (".hdr", ".img")
    return stem.with_suffix(hdr_suffix), stem.with_suffix(img_suffix), stem.with_suffix(".mat")


def is_nifti_pair_header(hdr_path: Path) -> bool:
    """True for a two-file NIfTI (.hdr magic "ni1"), which carries its own qform/sform."""
    with open(hdr_path, "rb") as handle:
        block = handle.read(ANALYZE_HEADER_BYTES)
    return len(block) == ANALYZE_HEADER_BYTES and block[344:347] == b"ni1"


def read_header(hdr_path: Path) -> Spm99AnalyzeHeader:
    """The header with its byte order detected from sizeof_hdr (348 in one order or the other)."""
    block = hdr_path.read_bytes()[:ANALYZE_HEADER_BYTES]
    if len(block) < ANALYZE_HEADER_BYTES:
        raise AnalyzeError(f"{hdr_path.name} is {len(block)} bytes, shorter than an Analyze header (348)")
    for endianness in ("<", ">"):
        if int(np.frombuffer(block[:4], dtype=f"{endianness}i4")[0]) == ANALYZE_HEADER_BYTES:
            return Spm99AnalyzeHeader(block, endianness=endianness, check=False)
    raise AnalyzeError(f"{hdr_path.name} is not an Analyze header (sizeof_hdr is not 348 in either byte order)")


def orient_code(header: Spm99AnalyzeHeader) -> int:
    """hist.orient as an unsigned byte (0 when the byte is NUL)."""
    raw = bytes(header["orient"].item())
    return raw[0] if raw else 0


def axes_matrix(axis_codes: str) -> np.ndarray:
    """3x3 matrix whose columns are the RAS unit vectors of voxel axes i, j, k ("ASL" -> i to A, ...)."""
    return np.array([_UNIT[c] for c in axis_codes], dtype=float).T


def originator_voxel(header: Spm99AnalyzeHeader) -> np.ndarray | None:
    """0-based voxel index of the world origin from SPM's originator, or None when unset or implausible."""
    origin = np.asarray(header["origin"][:3], dtype=float)
    dims = np.asarray(header["dim"][1:4], dtype=float)
    if np.any(origin) and np.all(origin > -dims) and np.all(origin < 2 * dims):
        return origin - 1.0
    return None


def orient_affine(code: int, shape: tuple[int, int, int], voxel_mm: tuple[float, float, float],
                  origin_voxel: np.ndarray | None = None) -> np.ndarray:
    """Voxel -> RAS mm for a header without a .mat file (FreeSurfer analyzeRead's orient table).

    origin_voxel None: world 0 at the field-of-view centre, voxel (n_i/2, n_j/2, n_k/2), as FreeSurfer."""
    axes = "LPS" if code == UNKNOWN_ORIENT else ORIENT_AXES.get(code)
    if axes is None:
        raise AnalyzeError(f"Analyze hist.orient = {code} is not one of the codes 0-5 (or -1 for unknown)")
    affine = np.eye(4)
    affine[:3, :3] = axes_matrix(axes) @ np.diag(voxel_mm)
    centre = np.asarray(shape, dtype=float) / 2.0 if origin_voxel is None else np.asarray(origin_voxel, float)
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def mat_file_affine(mat_path: Path) -> np.ndarray:
    """SPM .mat (`mat`, else `M`) 1-based voxel -> world, shifted to 0-based voxel indices."""
    from scipy.io import loadmat

    try:
        contents = loadmat(str(mat_path))
    except Exception as exc:
        raise AnalyzeError(f"{mat_path.name} beside the image is not a readable SPM .mat file: {exc}") from exc
    key = "mat" if "mat" in contents else "M" if "M" in contents else None
    if key is None:
        raise AnalyzeError(f"{mat_path.name} holds neither an SPM 'mat' nor an 'M' matrix")
    matrix = np.asarray(contents[key], dtype=float)
    matrix = matrix[:, :, 0] if matrix.ndim == 3 else matrix
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
        raise AnalyzeError(f"{mat_path.name}: '{key}' is not an invertible 4x4 voxel-to-world matrix")
    one_based = np.eye(4)
    one_based[:3, 3] = 1.0
    return matrix @ one_based


def read_analyze(path: str | Path, *, max_bytes: int | None = None) -> AnalyzeScan:
    """Read an Analyze 7.5 pair (either file may be given) the way FreeSurfer's analyzeRead does.

    `max_bytes`: refuse (AnalyzeError) a header claiming more float32 voxels than this, before reading."""
    hdr_path, img_path, mat_path = pair_paths(path)
    if not hdr_path.is_file():
        raise AnalyzeError(f"the header {hdr_path.name} of this Analyze pair is missing")
    if not img_path.is_file():
        raise AnalyzeError(f"the image {img_path.name} of this Analyze pair is missing")
    header = read_header(hdr_path)
    dims = [int(n) for n in header["dim"][1:4]]
    n_frames = max(int(header["dim"][4]), 1) if int(header["dim"][0]) >= 4 else 1
    if min(dims) < 1:
        raise AnalyzeError(f"{hdr_path.name} claims dimensions {dims}")
    if max_bytes is not None and 4 * int(np.prod(dims, dtype=object)) * n_frames > max_bytes:
        raise AnalyzeError(f"{hdr_path.name} claims {' x '.join(map(str, dims))} voxels x {n_frames} frames, "
                           f"more than the free memory holds: a corrupt header or not a single T1 scan")
    voxel_mm = tuple(abs(float(z)) for z in header["pixdim"][1:4])
    if min(voxel_mm) <= 0 or not all(np.isfinite(voxel_mm)):
        raise AnalyzeError(f"{hdr_path.name} gives voxel sizes {voxel_mm} mm; every size must be positive")
    try:
        with open(img_path, "rb") as handle:
            array = np.asarray(header.data_from_fileobj(handle), dtype=np.float32)
    except Exception as exc:
        raise AnalyzeError(f"{img_path.name}: {type(exc).__name__}: {exc}") from exc
    warnings: list[str] = []
    if mat_path.is_file():
        affine, geometry = mat_file_affine(mat_path), f"SPM {mat_path.name}"
    else:
        code = orient_code(header)
        if code == UNKNOWN_ORIENT:
            warnings.append("Analyze orient code -1 (unknown) and no .mat file: read as transverse flipped "
                            "(L, P, S) as FreeSurfer does; the orientation may be wrong")
        affine = orient_affine(code, tuple(dims), voxel_mm, originator_voxel(header))
        geometry = f"orient {code} ({ORIENT_NAMES.get(code, 'unknown')})"
    return AnalyzeScan(array, affine, geometry, header.endianness, tuple(warnings))


def write_analyze(hdr_path: str | Path, array: np.ndarray, voxel_mm: tuple[float, float, float], *,
                  orient: int = 0, endianness: str = ">", originator: tuple[int, int, int] | None = None,
                  mat: np.ndarray | None = None) -> Path:
    """Write an int16 Analyze 7.5 pair exactly as given: `array` [i, j, k] in the voxel order `orient`
    names (no reordering here), header byte order `endianness` ("<" or ">"), optional SPM originator
    (1-based voxel) and optional SPM .mat (`mat` = 1-based voxel -> world). The .img goes into place
    before the .hdr, both through temp files, so a visible .hdr always has its complete image."""
    hdr_path = Path(hdr_path)
    hdr_path.parent.mkdir(parents=True, exist_ok=True)
    _, img_path, mat_path = pair_paths(hdr_path)
    data = np.asarray(array)
    if data.ndim != 3:
        raise ValueError(f"write_analyze writes one 3D volume, got shape {data.shape}")
    header = Spm99AnalyzeHeader(endianness=endianness)
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.int16)
    header.set_zooms(tuple(float(z) for z in voxel_mm))
    header["vox_offset"] = 0.0
    header["orient"] = bytes([orient & 0xFF])
    if originator is not None:
        header["origin"][:3] = originator
    clipped = np.clip(np.rint(data), -32768, 32767).astype(f"{endianness}i2")
    tmp = hdr_path.parent / f".{hdr_path.stem}.{os.getpid()}.tmp"
    try:
        Path(f"{tmp}.img").write_bytes(clipped.tobytes(order="F"))
        Path(f"{tmp}.hdr").write_bytes(header.binaryblock)
        if mat is not None:
            from scipy.io import savemat

            savemat(f"{tmp}.mat", {"mat": np.asarray(mat, dtype=float), "M": np.asarray(mat, dtype=float)})
            os.replace(f"{tmp}.mat", mat_path)
        os.replace(f"{tmp}.img", img_path)
        os.replace(f"{tmp}.hdr", hdr_path)
    finally:
        for suffix in (".img", ".hdr", ".mat"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    return hdr_path


def ras_to_oasis_voxels(ras_array: np.ndarray) -> np.ndarray:
    """A RAS-ordered array [x (L->R), y (P->A), z (I->S)] in OASIS-1 voxel order [A, S, L]:
    i = posterior -> anterior, j = inferior -> superior, k = right -> left."""
    return np.ascontiguousarray(np.asarray(ras_array).transpose(1, 2, 0)[:, :, ::-1])


def write_oasis_analyze(hdr_path: str | Path, ras_array: np.ndarray, ras_voxel_mm: tuple[float, float, float],
                        ) -> Path:
    """Write a RAS-ordered int16 volume as an OASIS-1 file: sagittal, orient 2, big-endian, A, S, L voxel
    order, no originator and no .mat (the FreeSurfer / Clinica reading puts world 0 at the FOV centre).
    `ras_voxel_mm` is the voxel size along x, y, z; the header lists it in voxel order (y, z, x)."""
    sx, sy, sz = (float(s) for s in ras_voxel_mm)
    return write_analyze(hdr_path, ras_to_oasis_voxels(ras_array), (sy, sz, sx), orient=OASIS_ORIENT,
                         endianness=">")
