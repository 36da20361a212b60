import dataclasses
import json
import math

import pytest
import torch
from adafocus.core.checkpoint import load_checkpoint
from adafocus.core.config import Preset, get_preset
from adafocus.core.model import UniAdaFocus
from adafocus.core.run import load_run
from adafocus.core.train import (
    calibrate,
    cosine_lr,
    parameter_groups,
    recalibrate_batch_norm,
    train,
)
from adafocus.datasets.synthetic import FocusTaskConfig, SyntheticFocusDataset, collate


def tiny_preset(epochs=2) -> Preset:
    preset = get_preset("cpu-synthetic")
    preset.train = dataclasses.replace(preset.train, epochs=epochs, batch_size=8)
    preset.loss = dataclasses.replace(preset.loss, mc_samples=4)
    return preset


def tiny_sets(n=16):
    task = FocusTaskConfig(num_frames=8, frame_size=64)
    return SyntheticFocusDataset(n, task, seed=1), SyntheticFocusDataset(8, task, seed=2)


def test_cosine_schedule_endpoints_and_midpoint():
    assert cosine_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine_lr(0.1, 50, 100) == pytest.approx(0.05)
    assert cosine_lr(0.1, 100, 100) == pytest.approx(0.0, abs=1e-12)


def test_parameter_groups_cover_every_parameter_once_with_multipliers():
    preset = get_preset("paper-mbv2-r50", glance_pretrained=None, local_pretrained=None)
    model = UniAdaFocus(dataclasses.replace(preset.model, num_classes=5))
    groups = parameter_groups(model, 0.002, preset.train.lr_multipliers)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["classifier"] == pytest.approx(0.04) and lrs["spatial_policy"] == pytest.approx(0.0004)
    assert lrs["glance"] == pytest.approx(0.001) and lrs["local"] == pytest.approx(0.002)


class Crash(Exception):
    pass


def crash_after_first_epoch(message: str) -> None:
    if message.startswith("epoch 1/"):
        raise Crash


def test_train_writes_run_files_and_resumes_after_a_crash(tmp_path):
    train_set, val_set = tiny_sets()
    preset = tiny_preset(epochs=2)
    with pytest.raises(Crash):  # dies right after epoch 1 was checkpointed
        train(preset, train_set, val_set, tmp_path, device="cpu", collate_fn=collate, progress=False,
              log=crash_after_first_epoch)
    assert {"config.json", "last.pt", "best.pt", "log.tsv"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "config.json").read_text(encoding="utf-8")) == preset.to_dict()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0

    messages = []
    train(preset, train_set, val_set, tmp_path, device="cpu", collate_fn=collate, progress=False,
          log=messages.append)
    assert messages[0].startswith("resumed") and not any(m.startswith("epoch 1/") for m in messages)
    rows = (tmp_path / "log.tsv").read_text(encoding="utf-8").strip().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["1", "2"]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_resume_refuses_a_run_folder_of_another_config(tmp_path):
    train_set, val_set = tiny_sets()
    quiet = {"device": "cpu", "collate_fn": collate, "progress": False, "log": lambda s: None}
    train(tiny_preset(epochs=1), train_set, val_set, tmp_path, **quiet)
    with pytest.raises(ValueError, match="different config"):
        train(tiny_preset(epochs=3), train_set, val_set, tmp_path, **quiet)


def test_load_run_round_trip_gives_identical_predictions(tmp_path):
    train_set, val_set = tiny_sets()
    train(tiny_preset(1), train_set, val_set, tmp_path, device="cpu", collate_fn=collate, progress=False,
          log=lambda s: None)
    loaded = load_run(tmp_path / "last.pt", device="cpu")
    model, preset = loaded.model, loaded.preset
    state = load_checkpoint(tmp_path / "last.pt")
    fresh = UniAdaFocus(preset.model)
    fresh.load_state_dict(state["model_state"])
    fresh.eval()
    clip = torch.rand(2, 8, 3, 64, 64)
    assert torch.allclose(model.infer(clip).logits, fresh.infer(clip).logits)


def test_calibrate_writes_policy_for_budget(tmp_path):
    train_set, val_set = tiny_sets()
    train(tiny_preset(1), train_set, val_set, tmp_path, device="cpu", collate_fn=collate, progress=False,
          log=lambda s: None)
    model = load_run(tmp_path / "best.pt", device="cpu").model
    costs = model.exit_costs()
    budget = (costs[0] + costs[-1]) / 2
    loader = torch.utils.data.DataLoader(SyntheticFocusDataset(40, FocusTaskConfig(), seed=5), batch_size=20,
                                         collate_fn=collate)
    policy = calibrate(model, loader, budget, device="cpu", out_dir=tmp_path)
    assert policy.calibration_cost <= budget * 1.001 and policy.calibration_cost >= costs[0]
    saved = json.loads((tmp_path / "exit_policy.json").read_text(encoding="utf-8"))
    assert saved["budget"] == budget and len(saved["thresholds"]) == model.config.num_exits
    assert load_checkpoint(tmp_path / "calibration.pt")["logits"].shape == (40, model.config.num_exits, 4)
    assert not math.isnan(policy.q)


def test_precise_batch_norm_replaces_lagging_running_statistics_with_the_data_mean():
    class Normed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(2)

        def forward(self, clip, *, diversity=True):
            return self.norm(clip)

    model = Normed()
    model.norm.running_mean.fill_(100.0)  # statistics that no longer fit the weights / data
    data = [{"clip": torch.randn(16, 2) * 3 + torch.tensor([5.0, -2.0]), "label": torch.zeros(16)} for _ in range(8)]
    recalibrate_batch_norm(model, data, torch.device("cpu"), batches=4)
    expected = torch.cat([batch["clip"] for batch in data[:4]]).mean(0)
    assert torch.allclose(model.norm.running_mean, expected, atol=1e-5)
    assert model.norm.momentum == 0.1 and model.training
