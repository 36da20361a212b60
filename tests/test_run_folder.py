"""The run folder module: locating a user's --model, the model card, old checkpoints without a card."""
from __future__ import annotations

import json

import pytest
import torch
from adafocus.apps.cli import main as cli_main
from adafocus.core.checkpoint import load_checkpoint, save_checkpoint
from adafocus.core.config import get_preset
from adafocus.core.model import UniAdaFocus
from adafocus.core.run import (
    ModelCard,
    RunFolder,
    RunFolderError,
    checkpoint_extra,
    load_run,
    make_card,
)


def _save_run(folder, card=None, preset_name="cpu-video"):
    preset = get_preset(preset_name)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "best.pt", model_state=UniAdaFocus(preset.model).state_dict(),
                    config=preset.to_dict(), **checkpoint_extra(card))
    return preset


def test_locate_accepts_run_folder_best_and_last(tmp_path):
    run = tmp_path / "run"
    _save_run(run)
    (run / "last.pt").write_bytes((run / "best.pt").read_bytes())
    assert RunFolder.locate(run).checkpoint == run / "best.pt"
    assert RunFolder.locate(run / "best.pt").path == run
    assert RunFolder.locate(run / "last.pt").checkpoint == run / "last.pt"


@pytest.mark.parametrize("name, message", [
    ("calibration.pt", "calibration/threshold data, not a model"),
    ("other.pt", "not a run folder's model"),
    ("missing.pt", "no run folder or model"),
])
def test_locate_refuses_what_is_not_a_model(tmp_path, name, message):
    run = tmp_path / "run"
    _save_run(run)
    if name != "missing.pt":
        save_checkpoint(run / name, model_state={}, config={"criterion": "entropy"})
    with pytest.raises(RunFolderError, match=message):
        RunFolder.locate(run / name)
    with pytest.raises(RunFolderError, match="without best.pt"):
        RunFolder.locate(tmp_path)


def test_score_with_calibration_file_is_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    _save_run(run)
    save_checkpoint(run / "calibration.pt", model_state={}, config={"criterion": "entropy"})
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    code = cli_main(["score", str(video), "--model", str(run / "calibration.pt"), "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a model" in err[0] and "Traceback" not in err[0]


def test_card_round_trips_through_the_checkpoint(tmp_path):
    preset = get_preset("cpu-mri")
    spec = {"axis": "coronal", "num_slices": 16, "context": 1, "discard_border": 0.2, "size": 64,
            "template": "MNI152NLin2009aSym", "spacing_mm": 2.0, "t1_linear": {"spacing_mm": 2.0}}
    card = make_card("mri", preset.to_dict(), ["CN", "AD"], spec,
                     {"source": "manifest", "data": "/x/manifest.tsv", "subset": "validation", "ids": [["p1", "s1"]]})
    run = tmp_path / "run"
    _save_run(run, card, "cpu-mri")
    loaded = load_run(run, device="cpu")
    assert loaded.card == card and not loaded.card.derived
    assert loaded.card.input["axis"] == "coronal" and loaded.card.class_names == ["CN", "AD"]
    assert loaded.card.normalisation["mean"] == list(preset.model.normalize_mean)
    assert load_checkpoint(run / "best.pt")["card"]["domain"] == "mri"


def test_card_validation():
    preset = get_preset("cpu-video")
    with pytest.raises(ValueError, match="class names"):
        make_card("video", preset.to_dict(), ["only-one"])
    with pytest.raises(ValueError, match="input spec"):
        make_card("mri", preset.to_dict(), ["a", "b"])
    with pytest.raises(RunFolderError, match="domain"):
        ModelCard("audio", ["a"], {}, {})
    with pytest.raises(RunFolderError, match="newer"):
        ModelCard.from_dict({"domain": "video", "class_names": ["a"], "input": {}, "normalisation": {},
                             "version": 99})


def test_old_checkpoint_gets_a_derived_card(tmp_path):
    bare = tmp_path / "bare"
    preset = _save_run(bare)
    card = load_run(bare, device="cpu").card
    assert card.derived and card.domain == "video" and card.calibration is None
    assert card.class_names == ["class_0", "class_1"] and card.input["frame_size"] == preset.model.frame_size

    video = tmp_path / "video"
    _save_run(video)
    (video / "classes.json").write_text(json.dumps(["NonViolence", "Violence"]))
    (video / "split.json").write_text(json.dumps({"splits": {"val": [["Violence/a.mp4", 1]]}}))
    card = load_run(video, device="cpu").card
    assert card.class_names == ["NonViolence", "Violence"]
    assert card.calibration == {"source": "video-split", "data": None, "subset": "val", "ids": ["Violence/a.mp4"]}

    cv = tmp_path / "cv"
    fold = cv / "fold-2"
    _save_run(fold, preset_name="cpu-mri")
    (fold / "training_participants.tsv").write_text("participant_id\np1\n")
    (cv / "cv.json").write_text(json.dumps({"manifest": "/data/manifest.tsv", "clip": {"axis": "axial"}}))
    card = load_run(fold / "best.pt", device="cpu").card
    assert card.domain == "mri" and card.input["axis"] == "axial"
    assert card.calibration["source"] == "cv-fold" and card.calibration["fold"] == 2


def test_exit_policy_paths_per_budget(tmp_path):
    run = RunFolder(tmp_path)
    assert run.exit_policy() == tmp_path / "exit_policy.json"
    path = run.exit_policy(0.0156)
    path.parent.mkdir()
    path.write_text("{}")
    assert run.exit_policies() == {0.0156: path}
    with pytest.raises(ValueError, match="positive"):
        run.exit_policy(-1.0)


def test_wrong_weights_are_a_clear_error(tmp_path):
    run = tmp_path / "run"
    preset = get_preset("cpu-video")
    run.mkdir()
    save_checkpoint(run / "best.pt", model_state={"x": torch.zeros(1)}, config=preset.to_dict())
    with pytest.raises(RunFolderError, match="weights do not fit"):
        load_run(run, device="cpu")
