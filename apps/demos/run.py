"""`adafocus demo`: each part trains on built-in data and writes under OUT/<part>; where to look comes last."""
from __future__ import annotations

from pathlib import Path

from adafocus.apps.scoring.outputs import DETAILS_FILE, SCORES_FILE

DEMO_PARTS = ("focus", "video", "mri")


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(DEMO_PARTS))
    if unknown:
        raise ValueError(f"unknown demo part(s) {unknown}; choose from {', '.join(DEMO_PARTS)}")
    return parts


def run_demo_parts(out: Path, parts_text: str, *, epochs: int | None, device: str, seed: int) -> int:
    parts = parse_parts(parts_text)
    where: list[str] = []
    if "focus" in parts:
        from adafocus.apps.runs.synthetic import run_demo

        print("== focus: does the policy find the right frames and regions? (synthetic task, known truth)")
        run_demo(out / "focus", epochs=epochs, device=device)
        where.append(f"focus  {out / 'focus' / 'report.md'}  (+ focus_examples.png, results.json, run/)")
    if "video" in parts:
        from adafocus.apps.demos.video import run_video_demo

        print("== video: RLVS-layout folder -> train -> adafocus score")
        run_video_demo(out / "video", epochs=epochs, device=device)
        where.append(f"video  {out / 'video'}  ({SCORES_FILE}, {DETAILS_FILE}, contact sheets, video_demo.json)")
    if "mri" in parts:
        from adafocus.apps.demos.mri import mri_summary_lines, run_mri_demo

        print("== mri: OASIS-1-layout cohort -> preprocess -> 5-fold cross-validation -> report -> train -> "
              "adafocus score on raw scans")
        mri = run_mri_demo(out / "mri", device=device, epochs=epochs, seed=seed)
        where.append(f"mri    {out / 'mri' / 'cv' / 'report.md'}  (+ report.html, metrics.tsv, per-fold predictions); "
                     f"new scans scored: {out / 'mri' / 'scored' / SCORES_FILE}")
        where += [f"mri    {line}" for line in mri_summary_lines(mri)]
    print("\nDemo finished. Results:")
    for line in where:
        print("  " + line)
    return 0
