"""The MRI focus proof: ``cpu-mri`` trained on the synthetic lesion task (``datasets.synthetic_mri``), where the
truth is known: which sagittal slices cut the lesion, and where it is in them.

The learned slice + box selection is compared with baseline selections driven through the same trained
weights, with the same number of P x P patches (equal GMACs): random slices and boxes, central slices and
centred boxes, and mixes of the two. ``lesion_following`` asks whether the selection moves with the lesion
from subject to subject; a policy that looks at the same place for everyone scores 0.
"""
from __future__ import annotations

from collections.abc import Sequence

from adafocus.apps.runs.synthetic import chosen_focus
from adafocus.core.config import Preset
from adafocus.core.geometry import box_contains_points
from adafocus.core.model import UniAdaFocus
from adafocus.datasets.mri.dataset import ClipSpec
from adafocus.datasets.synthetic import object_centre
from adafocus.datasets.synthetic_mri import LesionClipDataset, LesionTaskConfig, lesion_splits
from adafocus.reports.metrics import best_fixed_place_hit_rate, follow_correlation

SELECTION_BASELINES = {
    "random_selection": {"frame_policy": "random", "patch_policy": "random"},
    "centre_selection": {"frame_policy": "central", "patch_policy": "center"},
    "learned_slices_random_boxes": {"patch_policy": "random"},
    "learned_slices_centre_boxes": {"patch_policy": "center"},
    "uniform_slices_learned_boxes": {"frame_policy": "uniform"},
}


def lesion_task_splits(preset: Preset, sizes: Sequence[tuple[str, int]],
                       config: LesionTaskConfig | None = None, *, progress: bool = False
                       ) -> dict[str, LesionClipDataset]:
    """Splits of the lesion task cut into clips the way ``train_on_manifest`` cuts scans for this preset
    (sagittal, 2.5D, the preset's candidate slices and frame size)."""
    return lesion_splits(ClipSpec.for_preset(preset), sizes, config or LesionTaskConfig(), progress=progress)


def slice_chance(dataset: LesionClipDataset) -> float:
    """Share of candidate slices that cut the lesion: the hit rate of slices chosen at random."""
    return float(dataset.truth()["object_frames"].float().mean())


def lesion_following(model: UniAdaFocus, dataset: LesionClipDataset) -> dict[str, float]:
    """Across subjects, the correlation between the lesion's position and where the model looked:
    slice_x: mean chosen slice (X voxel) vs the lesion's X; box_column / box_row: mean box centre on the
    chosen slices that cut the lesion vs the lesion's centre in the frame (subjects with such a slice).
    ``follow`` is the smallest of the three; ``slice_sets`` counts distinct chosen slice sets.
    ``box_hit``: over the boxes on chosen lesion slices, the share holding the lesion's centre;
    ``best_fixed_box_hit``: the most that boxes of the same sizes at one fixed place reach (what a policy
    that looks at the same place for everyone can at best do; reports.metrics.best_fixed_place_hit_rate)."""
    truth, chosen = dataset.truth(), chosen_focus(model, dataset)
    frames = chosen["frame_indices"]
    slices = truth["slice_indices"].gather(1, frames).double()
    on_lesion = truth["object_frames"].gather(1, frames)
    seen = on_lesion.any(dim=1)
    weights = on_lesion.double() / on_lesion.sum(dim=1, keepdim=True).clamp(min=1)
    box_centres = (object_centre(chosen["boxes"].double()) * weights[..., None]).sum(dim=1)[seen]
    lesion_in_frame = object_centre(truth["object_boxes"][:, 0].double())[seen] / model.config.frame_size
    result = {
        "slice_x": follow_correlation(truth["lesion_centre"][:, 0].numpy(), slices.mean(dim=1).numpy()),
        "box_column": follow_correlation(lesion_in_frame[:, 0].numpy(), box_centres[:, 0].numpy()),
        "box_row": follow_correlation(lesion_in_frame[:, 1].numpy(), box_centres[:, 1].numpy()),
        "subjects_with_lesion_slice": float(seen.double().mean()),
        "slice_sets": float(len({tuple(row) for row in frames.tolist()})),
    }
    result["follow"] = min(result["slice_x"], result["box_column"], result["box_row"])
    centres = object_centre(truth["object_boxes"].gather(1, frames[..., None].expand(-1, -1, 4)).double())[on_lesion]
    boxes = chosen["boxes"].double()[on_lesion] * model.config.frame_size  # frame fractions -> pixels
    sides = boxes[:, 2:] - boxes[:, :2]
    inside = box_contains_points(boxes, centres)
    result["box_hit"] = float(inside.double().mean()) if len(inside) else float("nan")
    result["best_fixed_box_hit"] = best_fixed_place_hit_rate(centres.numpy(), sides.numpy(), model.config.frame_size)
    return result

