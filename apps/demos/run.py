"""`adafocus demo`: each part trains on built-in data and writes under OUT/<part>; where to look comes last."""
from __future__ import annotations

from pathlib import Path

from adafocus.apps.scoring.outputs import DETAILS_FILE, SCORES_FILE
from adafocus.reports.results import flatten_numbers, save_result

DEMO_PARTS = ("focus", "video", "mri")


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(DEMO_PARTS))
    if unknown:
        raise ValueError(f"unknown demo part(s) {unknown}; choose from {', '.join(DEMO_PARTS)}")
    return parts


def run_demo_parts(out: Path, parts_text: str, *, epochs: int | None, device: str, seed: int,
                   results_dir: Path | None = None) -> int:
    """Run the chosen parts; with `results_dir`, also write their numbers as the result file demo.json."""
    parts = parse_parts(parts_text)
    where: list[str] = []
    measured: dict[str, dict] = {}
    if "focus" in parts:
        from adafocus.apps.runs.synthetic import run_demo

        print("== focus: does the policy find the right frames and regions? (synthetic task, known truth)")
        measured["focus"] = run_demo(out / "focus", epochs=epochs, device=device)
        where.append(f"focus  {out / 'focus' / 'report.md'}  (+ focus_examples.png, results.json, run/)")
    if "video" in parts:
        from adafocus.apps.demos.video import run_video_demo

        print("== video: RLVS-layout folder -> train -> adafocus score")
        measured["video"] = run_video_demo(out / "video", epochs=epochs, device=device)
        where.append(f"video  {out / 'video'}  ({SCORES_FILE}, {DETAILS_FILE}, contact sheets, video_demo.json)")
    if "mri" in parts:
        from adafocus.apps.demos.mri import mri_summary_lines, run_mri_demo

        print("== mri: OASIS-1-layout cohort -> preprocess -> 5-fold cross-validation -> report -> train -> "
              "adafocus score on raw scans")
        mri = measured["mri"] = run_mri_demo(out / "mri", device=device, epochs=epochs, seed=seed)
        where.append(f"mri    {out / 'mri' / 'cv' / 'report.md'}  (+ report.html, metrics.tsv, per-fold predictions); "
                     f"new scans scored: {out / 'mri' / 'scored' / SCORES_FILE}")
        where += [f"mri    {line}" for line in mri_summary_lines(mri)]
    print("\nDemo finished. Results:")
    for line in where:
        print("  " + line)
    if results_dir is not None:
        command = f"adafocus demo --parts {','.join(parts)} --seed {seed}" + (f" --epochs {epochs}" if epochs else "")
        path = save_result("demo", command, flatten_numbers(measured), title="The demo (built-in data)",
                           results_dir=results_dir)
        print(f"  numbers as a result file: {path}")
    return 0
