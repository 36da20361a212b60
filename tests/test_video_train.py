"""`adafocus train --data` on video datasets: detection, persisted splits, Diving48 ranges, the run folder
(calibration for budgets included), resume; and (slow) the moderation demo against the generator's truth."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from adafocus.apps.cli import main as cli_main
from adafocus.apps.runs.video import detect_video_data, load_video_data, train_on_videos
from adafocus.apps.scoring.outputs import read_rows
from adafocus.apps.scoring.videos import score_videos
from adafocus.core.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from _policy_fixtures import tiny_video_preset
from _video_fixtures import write_counter_video


def _class_tree(root: Path, classes: dict[str, int], *, ext: str = ".mp4") -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_counter_video(root / name / f"{name[:2]}_{i}{ext}", 12 + i, height=32, width=32)
    return root


def _diving48(root: Path, train: int = 24, test: int = 3) -> Path:
    (root / "rgb").mkdir(parents=True)
    vocab = [["Back", "15som", "05Twis", "FREE"], ["Forward", "NoTwis", "PIKE", "SS"], ["Inward", "25som", "NoTwis",
                                                                                          "TUCK"]]
    (root / "Diving48_vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    for split, count in (("train", train), ("test", test)):
        entries = []
        for i in range(count):
            name = f"{split}_{i:03d}"
            write_counter_video(root / "rgb" / f"{name}.mp4", 40, height=32, width=32)
            entries.append({"vid_name": name, "label": i % 3, "start_frame": 10 + i, "end_frame": 25 + i})
        (root / f"Diving48_V2_{split}.json").write_text(json.dumps(entries), encoding="utf-8")
    return root


def test_detect_video_data(tmp_path):
    rlvs = tmp_path / "archive" / "Real Life Violence Dataset"
    for name in ("Violence", "Nonviolence"):
        (rlvs / name).mkdir(parents=True)
    assert detect_video_data(tmp_path / "archive") == ("rlvs", rlvs)
    (tmp_path / "classes" / "cats").mkdir(parents=True)
    assert detect_video_data(tmp_path / "classes") == ("class-folders", tmp_path / "classes")
    annotations = tmp_path / "d48" / "annotations"
    annotations.mkdir(parents=True)
    (annotations / "Diving48_V2_train.json").write_text("[]", encoding="utf-8")
    assert detect_video_data(annotations / "Diving48_V2_train.json") == ("diving48", tmp_path / "d48")
    assert detect_video_data(tmp_path / "d48") == ("diving48", tmp_path / "d48")
    with pytest.raises(FileNotFoundError):
        detect_video_data(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="Diving48"):
        detect_video_data(tmp_path / "notes.txt")


def test_class_folder_split_is_stratified_saved_and_reused(tmp_path):
    root = _class_tree(tmp_path / "data", {"calm": 10, "fight": 10, "other": 10})
    split_file = tmp_path / "run" / "split.json"
    data = load_video_data(root, num_frames=4, size=32, split_file=split_file)
    assert data.kind == "class-folders" and data.class_names == ["calm", "fight", "other"]
    assert split_file.is_file()
    paths = {name: {path for path, _ in getattr(data, name).samples} for name in ("train", "val", "test")}
    assert sum(map(len, paths.values())) == 30 and not (paths["train"] & paths["val"] or paths["train"] &
                                                        paths["test"] or paths["val"] & paths["test"])
    for name in ("val", "test"):  # stratified: every class in every held-out set
        assert {label for _, label in getattr(data, name).samples} == {0, 1, 2}
    assert data.train.train and not data.val.train and not data.test.train
    again = load_video_data(root, num_frames=4, size=32, split_file=split_file)
    assert {path for path, _ in again.test.samples} == paths["test"]


def test_diving48_keeps_official_test_and_honours_frame_ranges(tmp_path):
    root = _diving48(tmp_path / "Diving48")
    data = load_video_data(root / "Diving48_V2_train.json", num_frames=4, size=32,
                           split_file=tmp_path / "split.json")
    assert data.kind == "diving48" and data.class_names[0] == "Back / 15som / 05Twis / FREE"
    assert len(data.train) + len(data.val) == 24 and len(data.test) == 3
    assert all("test_" in path for path, _ in data.test.samples)
    for dataset in (data.val, data.test):
        for i, item in enumerate(dataset.items):
            frames = dataset[i]["info"]["frame_indices"]
            assert all(item.start <= f < item.end for f in frames)


def _tiny_preset():
    return tiny_video_preset(batch_size=4)


def test_train_on_class_folders_writes_a_complete_run_and_resumes(tmp_path):
    torch.manual_seed(0)
    root = _class_tree(tmp_path / "data", {"calm": 8, "fight": 8, "other": 8})
    run = tmp_path / "run"
    messages: list[str] = []
    summary = train_on_videos(root, _tiny_preset(), run, device="cpu", progress=False, log=messages.append)
    for name in ("best.pt", "last.pt", "log.tsv", "config.json", "split.json", "classes.json", "calibration.pt",
                 "exit_policy.json", "evaluation.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "classes.json").read_text(encoding="utf-8")) == ["calm", "fight", "other"]
    assert load_checkpoint(run / "best.pt")["config"]["model"]["num_classes"] == 3  # set from the data
    calibration = load_checkpoint(run / "calibration.pt")
    assert calibration["logits"].shape == (len(json.loads((run / "split.json").read_text(encoding="utf-8"))["splits"]["val"]), 3, 3)
    evaluation = json.loads((run / "evaluation.json").read_text(encoding="utf-8"))
    assert evaluation["samples"] == summary["evaluation"]["samples"] > 0
    assert len(evaluation["accuracy_by_exit"]) == 3
    assert any("classes" in m for m in messages)

    messages.clear()
    train_on_videos(root, _tiny_preset(), run, device="cpu", progress=False, log=messages.append)
    assert any(m.startswith("resumed from") for m in messages)
    assert len((run / "log.tsv").read_text(encoding="utf-8").splitlines()) == 2  # header + the one epoch, not retrained

    # the run's calibration lets `score --budget` fit any budget; class names become the columns
    costs = json.loads((run / "exit_policy.json").read_text(encoding="utf-8"))["exit_costs"]
    out = tmp_path / "scores.csv"
    score_videos([str(root)], run / "best.pt", out, budget=costs[0], workers=0, progress=False, log=lambda _: None)
    header, rows = read_rows(out)
    assert [c for c in header if c.startswith("p_")] == ["p_calm", "p_fight", "p_other"]
    assert len(rows) == 24 and {r["exit_step"] for r in rows} == {"0"}


def test_train_cli_reports_bad_video_data(tmp_path, capsys):
    root = tmp_path / "Diving48"
    root.mkdir()
    (root / "Diving48_V2_train.json").write_text("[]", encoding="utf-8")
    assert cli_main(["train", "--data", str(root / "Diving48_V2_train.json"), "--preset", "cpu-video",
                     "--out", str(tmp_path / "run")]) == 2
    assert "Diving48_vocab.json" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_boxes_match_the_generators_ground_truth(tmp_path):
    from adafocus.apps.demos.video import run_video_demo

    torch.manual_seed(0)
    results = run_video_demo(tmp_path / "demo", device="cpu", log=lambda _: None)
    test = results["test_split"]
    assert test["files"] == 300
    assert test["accuracy"] >= 0.9 and test["mean_gmacs"] <= 1.15 * results["budget_gmacs"]
    # boxes in details.jsonl (source pixels) against the generator's boxes: far better than a fixed box
    assert test["box_hit_rate"] >= 0.7 and test["box_hit_rate"] > test["centre_box_hit_rate"] + 0.2
    assert test["object_frame_rate"] > 0.6  # the object is in half of the frames: the policy finds them
    outputs = results["outputs"]
    assert len(read_rows(outputs["scores"])[1]) == 2000
    assert len(list(Path(outputs["contact_sheets"]).glob("*.png"))) == 2000
