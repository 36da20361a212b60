"""Resident memory of one decoding process while it decodes many files, as a scoring worker does.

`adafocus bench score --files` reports each run's high-water marks; this script shows whether resident
memory grows with the number of files (a leak) or only peaks within single files (the largest decode).

    python benchmarks/decode_memory.py --files 400 --every 40
"""
from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

from adafocus.apps.bench.score import sample_video_links
from adafocus.apps.scoring.videos import ScoreInputs
from adafocus.core.config import get_preset


def resident_mb() -> float:
    with open("/proc/self/statm", encoding="utf-8") as statm:
        return int(statm.read().split()[1]) * 4096 / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--every", type=int, default=40, help="print after every this many files")
    parser.add_argument("--preset", default="cpu-video", help="frames and size to decode, from this preset")
    args = parser.parse_args()
    model = get_preset(args.preset).model
    with tempfile.TemporaryDirectory(prefix="adafocus-decode-") as scratch:
        inputs = ScoreInputs(sample_video_links(Path(scratch), args.files), model.num_candidates, model.frame_size)
        print(f"{'files':>6s} {'resident MB':>12s} {'peak so far MB':>15s}")
        for done in range(1, len(inputs) + 1):
            item = inputs[done - 1]
            if item["error"]:
                raise SystemExit(f"{item['path']}: {item['error']}")
            if done % args.every == 0 or done in (1, len(inputs)):
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"{done:6d} {resident_mb():12.0f} {peak:15.0f}", flush=True)


if __name__ == "__main__":
    main()
