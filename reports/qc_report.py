"""The registration QC report of a preprocessed cache, in the spirit of ClinicaDL's `quality-check`: one row per
manifest row (participant, session, status, QC scores, flag, reason) as TSV, and an HTML page showing, for
every preprocessed scan, its three mid-planes with the template's brain outline (nilearn's MNI152 brain mask,
datasets/mri/template.py) drawn over them, beside its scores and flag.

Written to `out_dir`: `qc.tsv`, `qc.html` and `qc_images/sub-<pid>_ses-<sid>_qc.png`, every file atomically.
Only participant and session ids identify a scan: no source paths, file or folder names (they can hold
names; error reasons have them replaced by "<scan file>") and no header fields.
"""
from __future__ import annotations

import csv
import html
import io
import re
from pathlib import Path

import nibabel as nib
import numpy as np
from adafocus.core.io import atomic_write_bytes, atomic_write_text
from adafocus.datasets.mri.manifest import MANIFEST_NAME, QC_COLUMNS, ManifestRow, read_manifest
from adafocus.datasets.mri.slices import PLANES, plane_frame
from adafocus.datasets.mri.template import mni_brain_mask, mni_template
from adafocus.datasets.mri.volume import sitk_to_volume
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

TSV_NAME, HTML_NAME, IMAGES_DIR = "qc.tsv", "qc.html", "qc_images"
TSV_COLUMNS = ("participant_id", "session_id", "status", *QC_COLUMNS, "image")
_FLAG_COLOURS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "": "#57606a"}


def _label(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "", text)


def image_name(row: ManifestRow) -> str:
    return f"sub-{_label(row.participant_id)}_ses-{_label(row.session_id.removeprefix('ses-'))}_qc.png"


def brain_mask_on(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The template brain mask sampled (nearest voxel) on a grid given by its RAS affine and shape."""
    spacing = float(np.linalg.norm(affine[:3, 0]))
    template = sitk_to_volume(mni_template(spacing))
    mask = mni_brain_mask(spacing)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    source = np.rint((world - template.affine[:3, 3]) @ np.linalg.inv(template.affine[:3, :3]).T).astype(int)
    inside = np.all((source >= 0) & (source < np.asarray(mask.shape)), axis=1)
    sampled = np.zeros(len(index), dtype=bool)
    sampled[inside] = mask[tuple(source[inside].T)]
    return sampled.reshape(shape)


def qc_figure_png(volume: np.ndarray, affine: np.ndarray, title: str) -> bytes:
    """Three mid-planes of a preprocessed (RAS, MNI-space) volume with the brain-mask outline in red."""
    mask = brain_mask_on(affine, volume.shape).astype(np.float32)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    figure = Figure(figsize=(9, 3.4), dpi=90)
    FigureCanvasAgg(figure)
    for k, plane in enumerate(PLANES):
        axis, row_axis, col_axis = PLANES[plane]
        middle = volume.shape[axis] // 2
        ax = figure.add_subplot(1, 3, k + 1)
        aspect = spacing[row_axis] / spacing[col_axis]
        ax.imshow(plane_frame(volume, plane, middle), cmap="gray", vmin=0, vmax=max(float(volume.max()), 1e-6),
                  aspect=aspect)
        outline = plane_frame(mask, plane, middle)
        if outline.any() and not outline.all():
            ax.contour(outline, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{plane}", fontsize=9)
        ax.set_axis_off()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def redacted(text: str, row: ManifestRow) -> str:
    """`text` without the scan's file and folder names (error reasons name the file; names can identify)."""
    if row.source_path is not None:
        for name in sorted({row.source_path.name, row.source_path.stem, row.source_path.parent.name}, key=len,
                           reverse=True):
            if len(name) > 2:
                text = text.replace(name, "<scan file>")
    return text


def _cell(value: object) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _html_page(rows: list[ManifestRow], images: dict[int, str]) -> str:
    counts = {flag: sum(r.qc_flag == flag for r in rows) for flag in ("pass", "warn", "fail")}
    errors = sum(r.is_error for r in rows)
    head = ["participant", "session", "flag", "NCC", "NMI", "coverage", "rotation (deg)", "scales", "shear",
            "orientation probe", "reason", "mid-planes (red: template brain outline)"]
    lines = ["<!doctype html>", "<html><head><meta charset='utf-8'><title>Registration QC</title>",
             ("<style>body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse}"
             " td,th{border:1px solid #ccc;padding:4px;vertical-align:top} img{width:540px}</style></head><body>"),
             "<h1>Registration QC</h1>",
             (f"<p>{len(rows)} manifest rows: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail, "
             f"{errors} not preprocessed (error or excluded). Failed scans are left out of training and scoring "
             f"unless asked for.</p>"), "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        flag = row.qc_flag or ("error" if row.is_error else "")
        reason = redacted(row.qc_reason or (row.status.removeprefix("error: ") if row.is_error else ""), row)
        scales = "" if row.qc_scale_min is None else f"{row.qc_scale_min:.2f}-{row.qc_scale_max:.2f}"
        probe = "" if row.qc_probe_gain is None else f"best {row.qc_probe_best}, gain {row.qc_probe_gain:+.2f}"
        image = f"<img src='{html.escape(images[i])}' alt='QC mid-planes'>" if i in images else ""
        colour = _FLAG_COLOURS.get(row.qc_flag, "#57606a")
        cells = [row.participant_id, row.session_id, f"<b style='color:{colour}'>{html.escape(flag)}</b>",
                 _cell(row.qc_ncc), _cell(row.qc_nmi), _cell(row.qc_coverage), _cell(row.qc_rotation_deg), scales,
                 _cell(row.qc_shear), probe, reason, image]
        lines.append("<tr>" + "".join(f"<td>{c if k in (2, 11) else html.escape(str(c))}</td>"
                                      for k, c in enumerate(cells)) + "</tr>")
    lines += ["</table></body></html>", ""]
    return "\n".join(lines)


def write_qc_report(cache_dir: str | Path, out_dir: str | Path) -> dict[str, Path | list[Path]]:
    """Write qc.tsv, qc.html and one PNG per preprocessed scan of `cache_dir/manifest.tsv` into `out_dir`.

    Returns {"tsv": path, "html": path, "images": [paths]}."""
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    rows = read_manifest(cache_dir / MANIFEST_NAME)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    images: dict[int, str] = {}
    written: list[Path] = []
    for i, row in enumerate(rows):
        if row.preprocessed_path is None or not row.preprocessed_path.is_file():
            continue
        image = nib.load(str(row.preprocessed_path))
        volume = np.asarray(image.dataobj, dtype=np.float32)
        title = f"{row.participant_id} {row.session_id}: {row.qc_flag or 'not checked'}"
        if row.qc_ncc is not None:
            title += f" (NCC {row.qc_ncc:.2f}, coverage {row.qc_coverage:.0%})"
        path = out_dir / IMAGES_DIR / image_name(row)
        atomic_write_bytes(path, qc_figure_png(volume, np.asarray(image.affine, dtype=float), title))
        images[i] = f"{IMAGES_DIR}/{path.name}"
        written.append(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(TSV_COLUMNS)
    for i, row in enumerate(rows):
        writer.writerow([row.participant_id, row.session_id, redacted(row.status, row),
                         *(_cell(getattr(row, c)) for c in QC_COLUMNS), images.get(i, "")])
    atomic_write_text(out_dir / TSV_NAME, buffer.getvalue())
    atomic_write_text(out_dir / HTML_NAME, _html_page(rows, images))
    return {"tsv": out_dir / TSV_NAME, "html": out_dir / HTML_NAME, "images": written}
