"""(slow) Native-resolution focus on a task the presets were not built on: `cpu-video` trained as `adafocus train`
trains it (apps.runs.video.train_on_videos) on a fresh fine-detail set (datasets.fine_detail: 2-pixel stripes on
an object 15% of a 160 x 120 frame, on screen for a third of a 48-frame clip, over real footage, with a
distractor and a weak noisy border-colour hint; generator seed 23, not one the preset was sized on), then
checked on the run's 90 held-out clips against the generator's boxes. Two training seeds FIXED here, 0 and 3 (3 misses today),
about 8 minutes each. The checks and thresholds are the bench's (``adafocus bench focus --task fine-detail``,
apps/bench/focus.py FINE_DETAIL_CHECKS: accuracy >= 0.85, boxes on the object's centre >= 0.7 and 0.3 above
centred boxes of the same size, chosen frames showing the object > 0.5 where a third of them do), which gives
the rate over more seeds."""
from __future__ import annotations

import pytest
from adafocus.apps.bench.focus import FOCUS_TASKS, format_seed, train_and_check_seed

# Seed 3 misses (bench focus --task fine-detail --seeds 6 at 2a2e22e, docs/results/focus_fine_detail.json): its boxes
# hold the object's centre 0.02 of the time (centred boxes 0.18) while accuracy is 0.99 from the glance alone.
SEED_3_MISSES = pytest.mark.xfail(strict=False, raises=AssertionError, reason=(
    "seed 3: boxes on the object 0.02 (policy collapsed to one place); open in the seeds-evidence issue"))
SEEDS = (0, pytest.param(3, marks=SEED_3_MISSES))


@pytest.fixture(scope="module")
def fine_detail(tmp_path_factory):
    work = tmp_path_factory.mktemp("fine_detail")
    return work, FOCUS_TASKS["fine-detail"].prepare(work, False, print)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_cpu_video_reads_two_pixel_detail_and_boxes_the_object(fine_detail, seed):
    work, data = fine_detail
    outcome = train_and_check_seed("fine-detail", seed, work, data=data)
    print(format_seed(outcome))
    assert outcome["measured"]["samples"] == 90
    assert outcome["missed"] == [], {name: outcome["checks"][name] for name in outcome["missed"]}
