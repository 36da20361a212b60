"""Importing the authors' released checkpoints: every tensor is used, and the imported model's eval outputs
(logits at every exit, chosen frames, patch boxes) equal the authors' computation on the same input."""
import _official_fixtures as ref
import pytest
import torch
from adafocus.core.official import (
    ACTION_ROWS,
    OfficialCheckpointError,
    detect_variant,
    import_official,
    tonylins_mobilenet_key,
)

TOL = {"rtol": 1e-4, "atol": 1e-4}


def _clip(batch, frames, seed=1):
    return torch.rand(batch, frames, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _check(result, expected_logits, expected_idx, expected_boxes):
    assert torch.equal(result.frame_indices, expected_idx)
    torch.testing.assert_close(result.boxes, expected_boxes, rtol=1e-5, atol=1e-5)
    scale = expected_logits.abs().max()
    torch.testing.assert_close(result.logits / scale, expected_logits / scale, **TOL)


def test_ua_a_checkpoint_reproduces_the_authors_eval_outputs():
    ckpt = ref.ua_a_checkpoint(num_classes=5, num_glance=4, num_focus=4)
    model, preset, report = import_official(ckpt, "auto")
    assert report.variant == "ua-a" and report.complete, report.problems()
    assert sorted({k.split(".")[0] + "." + k.split(".")[1] for k in report.unused}) == \
        ["global_CNN.classifier", "local_CNN.fc"]
    assert (preset.model.num_glance, preset.model.num_focus, preset.model.num_candidates) == (4, 4, 12)
    clip = _clip(2, 12)
    expected = ref.ref_ua_a(ckpt, clip, 4, 4)
    result = model.infer(clip)
    assert len(set(result.frame_indices[0].tolist())) == 4
    _check(result, *expected)


def test_tsm_checkpoint_reproduces_the_authors_eval_outputs():
    ckpt = ref.tsm_checkpoint(num_classes=5, num_glance=4)
    model, preset, report = import_official(ckpt, "tsm", patch_size=96, num_focus=4)
    assert report.complete and not report.unused, report.problems()
    assert preset.model.num_candidates == 12 and preset.model.classifier == "tsn"
    clip = _clip(2, 12, seed=2)
    _check(model.infer(clip), *ref.ref_tsm(ckpt, clip, 4, 4, 96))


def test_x3d_checkpoint_reproduces_the_authors_eval_outputs():
    ckpt = ref.x3d_checkpoint(num_classes=5, num_glance=4)
    model, preset, report = import_official(ckpt, num_focus=4)
    assert report.variant == "x3d" and report.complete and not report.unused, report.problems()
    assert (preset.model.glance_backbone, preset.model.local_backbone) == ("x3d_s", "x3d_l")
    assert preset.model.head_hidden == 2048 and preset.model.glance_size == 160
    clip = _clip(1, 12, seed=3)
    _check(model.infer(clip), *ref.ref_x3d_model(ckpt, clip, 4, 4, 128))


def test_action_order_is_swapped_pairwise():
    """Theirs (y, x, h, w), ours (x, y, w, h): a policy whose last conv has only row 0 (their y) set moves our y."""
    assert ACTION_ROWS == (1, 0, 3, 2)
    ckpt = ref.ua_a_checkpoint(num_glance=4, num_focus=4)
    state = ckpt["state_dict"]
    state["module.spatial_policy.encoder.9.weight"] = torch.zeros_like(state["module.spatial_policy.encoder.9.weight"])
    state["module.spatial_policy.encoder.9.weight"][0] = 1.0   # raise their y only
    model, _, _ = import_official(ckpt)
    boxes = model.infer(_clip(1, 12)).boxes[0]
    centred = 0.5 * (1 - 160 / 224)  # actions sigmoid(0) = 0.5: sides (96 + 64) px, centred
    assert torch.allclose(boxes[:, 0], torch.full((4,), centred), atol=1e-6)        # our x: unchanged
    assert torch.allclose(boxes[:, 2] - boxes[:, 0], torch.full((4,), 160 / 224), atol=1e-6)
    assert (boxes[:, 1] > centred + 0.05).all()                                      # our y: moved down


def test_mobilenet_layout_translation():
    assert tonylins_mobilenet_key("features.1.conv.3.weight") == "features.1.conv.1.weight"
    assert tonylins_mobilenet_key("features.5.conv.4.running_var") == "features.5.conv.1.1.running_var"
    assert tonylins_mobilenet_key("features.5.conv.6.weight") == "features.5.conv.2.weight"
    assert tonylins_mobilenet_key("features.18.1.bias") == "features.18.1.bias"


def test_incomplete_or_foreign_checkpoints_are_named():
    ckpt = ref.ua_a_checkpoint(num_glance=4, num_focus=4)
    del ckpt["state_dict"]["module.aux_fc.weight"]
    ckpt["state_dict"]["module.extra_head.weight"] = torch.zeros(3)
    _, _, report = import_official(ckpt)
    assert not report.complete
    assert "module.extra_head.weight" not in report.problems() and "extra_head.weight" in report.problems()
    assert "proxy_head.weight" in report.problems()
    with pytest.raises(OfficialCheckpointError, match="not an Uni-AdaFocus checkpoint"):
        detect_variant({"conv1.weight": torch.zeros(1)})


def _write_authors_file(path, ckpt):
    import numpy as np
    torch.save({**ckpt, "epoch": 50, "best_prec1": np.float64(80.7)}, path)  # as their main.py saves it
    return path


@pytest.fixture
def video_tree(tmp_path):
    from _video_fixtures import write_counter_video
    root = tmp_path / "videos"
    for name in ("calm", "fight", "other"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            write_counter_video(root / name / f"{name}_{i}.mp4", 14 + i, height=32, width=40)
    return root


def test_import_official_cli_writes_a_run_folder_every_command_loads(tmp_path, capsys):
    from adafocus.apps.cli import main
    from adafocus.core.run import load_run

    ckpt = _write_authors_file(tmp_path / "actnet_p128.pth.tar", ref.ua_a_checkpoint(num_classes=3))
    (tmp_path / "classInd.txt").write_text("1 calm\n2 fight\n3 other\n", encoding="utf-8")
    run = tmp_path / "imported"
    assert main(["import-official", str(ckpt), "--out", str(run), "--classes", str(tmp_path / "classInd.txt")]) == 0
    assert "ua-a" in capsys.readouterr().out
    loaded = load_run(run, device="cpu")
    assert loaded.card.class_names == ["calm", "fight", "other"]
    assert loaded.card.input["eval_crop"] == pytest.approx(224 / 256)
    clip = _clip(1, 12)
    expected_logits = ref.ref_ua_a(torch.load(ckpt, weights_only=False), clip, 4, 4)[0]
    torch.testing.assert_close(loaded.model.infer(clip).logits, expected_logits, rtol=1e-4, atol=1e-4)
    assert main(["import-official", str(ckpt), "--out", str(run)]) == 2   # never overwrites a run
    assert "exists" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(run), "--budget", "20", "--device", "cpu"]) == 2  # loads, needs data
    assert "--data" in capsys.readouterr().err


def test_import_refuses_a_foreign_file_in_one_line(tmp_path, capsys):
    from adafocus.apps.cli import main
    torch.save({"state_dict": {"conv.weight": torch.zeros(2)}}, tmp_path / "x.pth.tar")
    assert main(["import-official", str(tmp_path / "x.pth.tar"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not an Uni-AdaFocus checkpoint" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_imported_model_scores_videos_and_fine_tunes_with_a_new_head(tmp_path, video_tree):
    from adafocus.apps.cli import main
    from adafocus.apps.scoring.outputs import read_rows
    from adafocus.core.checkpoint import load_checkpoint

    ckpt = _write_authors_file(tmp_path / "minik.pth.tar", ref.ua_a_checkpoint(num_classes=5))
    (tmp_path / "names.json").write_text('["a", "b", "c", "d", "e"]', encoding="utf-8")
    assert main(["import-official", str(ckpt), "--out", str(tmp_path / "imported"),
                 "--classes", str(tmp_path / "names.json")]) == 0
    out = tmp_path / "scores.csv"   # the imported model scores a video folder
    assert main(["score", str(video_tree / "calm"), "--model", str(tmp_path / "imported"), "--out", str(out),
                 "--workers", "0", "--batch-size", "6", "--quiet", "--device", "cpu"]) == 0
    header, rows = read_rows(out)
    assert [c for c in header if c.startswith("p_")] == ["p_a", "p_b", "p_c", "p_d", "p_e"]
    assert len(rows) == 6 and {r["label"] for r in rows} <= set("abcde")
    # an imported run has no calibration split of its own: --data draws one from the user's videos
    assert main(["calibrate", "--model", str(tmp_path / "imported"), "--budget", "4", "--data", str(video_tree),
                 "--workers", "0", "--batch-size", "6", "--device", "cpu"]) == 0
    assert (tmp_path / "imported" / "split.json").is_file()
    tuned = tmp_path / "tuned"
    assert main(["train", "--init", str(tmp_path / "imported"), "--data", str(video_tree), "--out", str(tuned),
                 "--epochs", "1", "--batch-size", "4", "--workers", "0", "--quiet", "--device", "cpu"]) == 0
    before = load_checkpoint(tmp_path / "imported" / "best.pt")["model_state"]
    after = load_checkpoint(tuned / "best.pt")
    assert after["config"]["model"]["num_classes"] == 3 and after["config"]["train"]["init"]
    assert after["model_state"]["classifier.focus_heads.3.1.weight"].shape[0] == 3          # a new head
    for key in ("spatial_policy.body.9.weight", "local_encoder.body.layer4.2.conv3.weight"):  # carried over
        assert (after["model_state"][key] - before[key]).abs().max() < 0.05 * before[key].abs().max()


def test_x3d_backbones_load_slowfast_kinetics_files(tmp_path):
    """The X3D-S / X3D-L Kinetics-400 files the authors start from (SlowFast layout, {"model_state": ...})."""
    from adafocus.core.backbones import create_backbone
    r = ref.RandomState(5)
    ref.add_slowfast_x3d(r, "", "s", num_classes=400)
    torch.save({"model_state": r.state, "epoch": 300}, tmp_path / "x3d_s.pyth")
    backbone = create_backbone("x3d_s", pretrained=str(tmp_path / "x3d_s.pyth"), num_frames=4).eval()
    video = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = backbone(video.transpose(1, 2).flatten(0, 1))             # [B*T, 432, 2, 2]
        expected = ref.ref_x3d(r.state, "", video).transpose(1, 2).flatten(0, 1)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_x3d_preset_starts_its_heads_from_the_slowfast_head(tmp_path):
    """The authors' share_head_params: lin_5 and (same class count) projection into both X3D-layout heads."""
    from adafocus.core.config import get_preset
    from adafocus.core.model import UniAdaFocus
    r = ref.RandomState(6)
    ref.add_slowfast_x3d(r, "", "s", num_classes=400)
    torch.save({"model_state": r.state}, tmp_path / "x3d_s.pyth")
    frames = {"num_glance": 4, "num_focus": 4, "num_candidates": 12, "glance_backbone_kwargs": {"num_frames": 4},
              "local_backbone_kwargs": {"num_frames": 4}, "local_pretrained": None}
    for classes in (400, 7):
        model = UniAdaFocus(get_preset("x3d-p128-16x32", glance_pretrained=str(tmp_path / "x3d_s.pyth"),
                                       num_classes=classes, **frames).model)
        for head in (model.classifier.glance_head, model.glance_head):
            assert torch.equal(head[0].weight, r.state["head.lin_5.weight"].flatten(1))
            assert torch.equal(head[3].weight, r.state["head.projection.weight"]) == (classes == 400)
        assert not torch.equal(model.classifier.local_head[0].weight, r.state["head.lin_5.weight"].flatten(1))
