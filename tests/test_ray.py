"""`score --ray` and `preprocess --ray` on a local 2-CPU Ray instance (marker `cluster`, `make test-cluster`):
the same rows / manifest statuses as the local path, and a Ray worker killed mid-run loses and duplicates
nothing."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.cluster

import nibabel as nib
from adafocus.apps.cli import main as cli_main
from adafocus.apps.scoring.outputs import read_rows
from adafocus.apps.scoring.ray import ModelScorer, init_ray, ray_scan_executor, score_on_ray
from adafocus.apps.scoring.videos import score_videos
from adafocus.core.checkpoint import save_checkpoint
from adafocus.core.config import get_preset
from adafocus.core.model import UniAdaFocus
from adafocus.datasets.mri.manifest import EXCLUDED_LABEL, ManifestRow, read_manifest
from adafocus.datasets.mri.preprocess import T1LinearConfig, preprocess_manifest, synthetic_scan

sys.path.insert(0, str(Path(__file__).parent))
from _mri_fixtures import one_itk_thread, write_nifti
from _policy_fixtures import untrained_video_run
from _video_fixtures import write_audio_only, write_counter_video

TIMING = ("decode_ms", "model_ms")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One private local Ray instance (2 CPUs, 127.0.0.1, no dashboard) for the module, whatever cluster the
    machine has registered; `--ray` in this process joins it."""
    ray = pytest.importorskip("ray")  # imported here: the default suite collects this file without Ray
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_video_run(tmp_path_factory.mktemp("model"))


def _mixed_folder(folder: Path, good: int) -> list[str]:
    """`good` short clips plus broken files; returns the inputs (the folder and a file that does not exist)."""
    folder.mkdir(parents=True)
    for i in range(good):
        write_counter_video(folder / f"clip_{i:02d}.mp4", 10 + i, height=32, width=32)
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "text.mp4").write_bytes(b"this is not a video\n" * 40)
    clip = (folder / "clip_00.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(clip[: len(clip) // 2])
    write_audio_only(folder / "audio.mp4")
    return [str(folder), str(folder / "missing.mp4")]


def _without_timing(path: Path) -> dict[str, dict[str, str]]:
    return {row["path"]: {k: v for k, v in row.items() if k not in TIMING} for row in read_rows(path)[1]}


def _details(path: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len({r["path"] for r in records}) == len(records), "a file has two details lines"
    return {r["path"]: r for r in records}


def _assert_same_scores(local: dict, remote: dict) -> None:
    assert local.keys() == remote.keys()
    for path, row in local.items():
        other = remote[path]
        probs = [k for k in row if k.startswith("p_")]
        assert {k: v for k, v in row.items() if k not in probs} == {k: v for k, v in other.items() if k not in probs}
        if row["status"] == "ok":  # same model, maybe another batch composition: float noise only
            assert np.allclose([float(row[k]) for k in probs], [float(other[k]) for k in probs], atol=2e-6)


def test_score_ray_writes_the_rows_the_local_path_writes(checkpoint, tmp_path, capsys):
    inputs = _mixed_folder(tmp_path / "videos", good=5)
    local = score_videos(inputs, checkpoint, tmp_path / "local.csv", details=tmp_path / "local.jsonl",
                         workers=0, batch_size=3, progress=False)
    code = cli_main(["score", *inputs, "--model", str(checkpoint), "--out", str(tmp_path / "ray.csv"),
                     "--details", str(tmp_path / "ray.jsonl"), "--batch-size", "3", "--quiet", "--ray"])
    assert code == 0 and "5 scored, 5 failed, 0 skipped" in capsys.readouterr().out
    assert local.scored == 5 and local.failed == 5
    rows = _without_timing(tmp_path / "ray.csv")
    _assert_same_scores(_without_timing(tmp_path / "local.csv"), rows)
    assert [r["path"] for r in read_rows(tmp_path / "ray.csv")[1]] == \
        [r["path"] for r in read_rows(tmp_path / "local.csv")[1]]  # the input order, as locally
    assert {Path(p).name for p, r in rows.items() if r["status"] == "error"} == \
        {"zero.mp4", "text.mp4", "truncated.mp4", "audio.mp4", "missing.mp4"}
    local_details, ray_details = _details(tmp_path / "local.jsonl"), _details(tmp_path / "ray.jsonl")
    assert local_details.keys() == ray_details.keys()
    for path, record in local_details.items():
        other = ray_details[path]
        assert record.get("exit_step") == other.get("exit_step") and record.get("error") == other.get("error")
        for mine, theirs in zip(record.get("selected", []), other.get("selected", [])):
            assert mine["frame"] == theirs["frame"]
            assert np.allclose(mine["box"], theirs["box"], atol=0.11)  # boxes rounded to 0.1 px
        assert len(record.get("selected", [])) == len(other.get("selected", []))


class DiesOnceScorer(ModelScorer):
    """The real actor, except that its third batch SIGKILLs its own process, once per job (the count lives in
    a file, so the restarted actor does not die again)."""

    marker: str = ""

    def __call__(self, batch):
        calls = Path(self.marker + ".calls")
        count = int(calls.read_text(encoding="utf-8")) + 1 if calls.exists() else 1
        calls.write_text(str(count), encoding="utf-8")
        if count == 3:
            Path(self.marker).write_text(str(os.getpid()), encoding="utf-8")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_worker_killed_mid_run_every_file_exactly_once(checkpoint, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
    inputs = _mixed_folder(tmp_path / "videos", good=7)
    scorer = type("Scorer", (DiesOnceScorer,), {"marker": str(tmp_path / "killed.pid")})
    out, details = tmp_path / "scores.csv", tmp_path / "details.jsonl"
    summary = score_on_ray(inputs, checkpoint, out, details=details, batch_size=2, progress=False, scorer=scorer)
    killed = int((tmp_path / "killed.pid").read_text(encoding="utf-8"))
    assert killed != os.getpid()  # a worker died, not this process
    assert int((tmp_path / "killed.pid.calls").read_text(encoding="utf-8")) == 7  # 6 batches + the killed try
    _, rows = read_rows(out)
    names = sorted(Path(r["path"]).name for r in rows)
    expected = sorted([f"clip_{i:02d}.mp4" for i in range(7)] +
                      ["zero.mp4", "text.mp4", "truncated.mp4", "audio.mp4", "missing.mp4"])
    assert names == expected  # 0 lost, 0 duplicated
    assert sorted(Path(p).name for p in _details(details)) == expected
    assert summary.scored == 7 and summary.failed == 5 and summary.exit_code == 0

    rerun = score_videos(inputs, checkpoint, out, details=details, workers=0, progress=False, log=lambda _: None)
    assert rerun.skipped == 12 and rerun.scored == rerun.failed == 0  # done, whatever ran it
    assert len(read_rows(out)[1]) == 12


# coarse settings so N4 + registration take well under a second per scan
FAST = T1LinearConfig(spacing_mm=4.0, registration_spacing_mm=4.0, n4_shrink_factor=2)


def _cohort(raw: Path) -> list[ManifestRow]:
    rng = np.random.default_rng(5)
    rows = []
    for k in range(2):
        scan = synthetic_scan(rng, spacing_mm=4.0)
        rows.append(ManifestRow(f"good{k}", "ses-BL", k, "CN", 70.0, "F",
                                write_nifti(raw / f"good{k}.nii.gz", scan.array, scan.affine)))
    (raw / "empty.nii.gz").write_bytes(b"")
    rows.append(ManifestRow("empty", "ses-BL", 0, "CN", 70.0, "F", raw / "empty.nii.gz"))
    four_d = np.ones((8, 8, 8, 2), dtype=np.float32)
    rows.append(ManifestRow("fmri", "ses-BL", 1, "AD", 70.0, "F", write_nifti(raw / "fmri.nii.gz", four_d)))
    rows.append(ManifestRow("mci", "ses-BL", EXCLUDED_LABEL, "MCI", 70.0, "F", raw / "good0.nii.gz",
                            status="error: diagnosis 'MCI' not in classes ['CN', 'AD']"))
    return rows


def test_preprocess_ray_gives_the_local_manifest(tmp_path):
    rows = _cohort(tmp_path / "raw")
    with one_itk_thread():  # a Ray task holds one CPU and registers on one ITK thread: compare like with like
        local = preprocess_manifest(rows, tmp_path / "local", workers=1, progress=False, config=FAST)
    remote = preprocess_manifest(rows, tmp_path / "ray", progress=False, config=FAST,
                                 executor=ray_scan_executor(None))
    assert [r.status for r in read_manifest(tmp_path / "ray" / "manifest.tsv")] == [r.status for r in local]
    assert [r.status for r in remote] == [r.status for r in local]
    assert [r.status for r in local[:2]] == ["ok", "ok"] and local[2].is_error and local[3].is_error
    for mine, theirs in zip(local[:2], remote[:2]):
        assert theirs.preprocessed_path == tmp_path / "ray" / mine.preprocessed_path.relative_to(tmp_path / "local")
        difference = nib.load(theirs.preprocessed_path).get_fdata() - nib.load(mine.preprocessed_path).get_fdata()
        assert np.abs(difference).max() < 1e-6  # the same seed and ITK threads: the same volume


def _untrained_mri_run(folder: Path) -> Path:
    """An untrained cpu-mri run folder (8 sagittal slices of 32 px) whose card asks for the FAST t1-linear."""
    import dataclasses

    from adafocus.core.run import RunFolder, checkpoint_extra, make_card
    from adafocus.datasets.mri.dataset import ClipSpec

    torch.manual_seed(0)
    preset = get_preset("cpu-mri", num_candidates=8, num_glance=8, num_focus=2, frame_size=32, glance_size=32,
                        patch_size=16, min_patch_side=16, max_patch_side=24)
    spec = ClipSpec(num_slices=8, size=32)
    card = make_card("mri", preset.to_dict(), ["CN", "AD"], {
        **spec.to_dict(), "template": "MNI152NLin2009aSym", "spacing_mm": FAST.spacing_mm,
        "t1_linear": dataclasses.asdict(FAST)})
    run = RunFolder(folder)
    run.path.mkdir(parents=True)
    save_checkpoint(run.best, config=preset.to_dict(), model_state=UniAdaFocus(preset.model).state_dict(),
                    **checkpoint_extra(card))
    return run.path


def test_score_ray_on_scans_preprocesses_on_ray_with_the_local_statuses(tmp_path, capsys):
    rows = _cohort(tmp_path / "raw")
    scans = [str(r.source_path) for r in rows[:4]]  # two good scans, an empty file, a 4D image
    run = _untrained_mri_run(tmp_path / "run")
    common = ["--model", str(run), "--device", "cpu", "--quiet"]
    assert cli_main(["score", *scans, "--out", str(tmp_path / "local"), *common]) == 0
    assert cli_main(["score", *scans, "--out", str(tmp_path / "ray"), *common, "--ray"]) == 0
    assert "2 scored, 2 failed" in capsys.readouterr().out
    local, remote = read_rows(tmp_path / "local" / "scores.csv")[1], read_rows(tmp_path / "ray" / "scores.csv")[1]
    assert [(r["path"], r["status"], r["error"]) for r in remote] == [(r["path"], r["status"], r["error"]) for r in local]
    assert len(list((tmp_path / "ray" / "cache").rglob("*_T1w.nii.gz"))) == 2  # preprocessed by the Ray tasks
    records = [r for r in _details(tmp_path / "ray" / "details.jsonl").values() if r["status"] == "ok"]
    assert len(records) == 2 and all("box_native_voxels" in s for r in records for s in r["selected"])
