"""How much 2-pixel detail reaches a P x P focus patch, by frame size: the README's "Glance low, focus native" table.

Writes (or reuses) a fine-detail folder (adafocus.datasets.fine_detail), loads each clip's evaluation view at
each frame size, cuts a patch around the true object box at three box sizes, and prints the mean pixel step
along the stripes' direction of change vs across it (0-255).

    python benchmarks/fine_detail_patch_contrast.py --data /tmp/fine_detail --clips 60
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from adafocus.core.geometry import crop_patches
from adafocus.datasets.fine_detail import write_fine_detail_videos
from adafocus.datasets.video import load_clip

SIZINGS = ((64, 24), (128, 32))  # (frame size, P): cpu-video's, and frames at the 160 x 120 source's scale


def steps_along_and_across(patch: torch.Tensor, label: int) -> tuple[float, float]:
    grey = patch.mean(0)
    rows = (grey[1:] - grey[:-1]).abs().mean().item()
    cols = (grey[:, 1:] - grey[:, :-1]).abs().mean().item()
    return (rows, cols) if label == 0 else (cols, rows)


def patch_contrast(root: Path, records: list[dict], frame_size: int, patch: int, box_scales=(1.0, 1.25, 1.5)
                   ) -> dict[float, tuple[float, float]]:
    out = {s: [] for s in box_scales}
    for record in records:
        clip, info = load_clip(root / record["path"], len(record["boxes"]), frame_size, train=False)
        vx0, vy0, vx1, vy1 = info.view_box
        for t, box in enumerate(record["boxes"]):
            if box is None or t % 4:
                continue
            cx = ((box[0] + box[2]) / 2 - vx0) / (vx1 - vx0)
            cy = ((box[1] + box[3]) / 2 - vy0) / (vy1 - vy0)
            for scale in box_scales:
                half = scale * patch / frame_size / 2
                cut = crop_patches(clip[t:t + 1], torch.tensor([[cx - half, cy - half, cx + half, cy + half]]), patch)
                out[scale].append(steps_along_and_across(cut[0], record["label"]))
    return {s: tuple(float(v) for v in np.mean(values, axis=0) * 255) for s, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="fine-detail folder (written when missing)")
    parser.add_argument("--clips", type=int, default=60)
    args = parser.parse_args()
    truth = args.data / "ground_truth.jsonl"
    if not truth.is_file():
        write_fine_detail_videos(args.data, args.clips)
    records = [json.loads(line) for line in truth.read_text(encoding="utf-8").splitlines()][:args.clips]
    for frame_size, patch in SIZINGS:
        for scale, (along, across) in patch_contrast(args.data, records, frame_size, patch).items():
            print(f"frames {frame_size}, P {patch}, box {scale:g} x P: along {along:.1f}, across {across:.1f}, "
                  f"ratio {along / across:.1f}")


if __name__ == "__main__":
    main()
