"""Checkpoints: round trip, plain-data validation, and refusal of files that would run code."""
import os
import pickle
import re

import numpy as np
import pytest
import torch
from adafocus.core.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    package_version,
    save_checkpoint,
)


def _model_state() -> dict:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).state_dict()


class _CodeOnLoad:
    """A pickle payload that creates `marker` when unpickled by a full (unsafe) unpickler."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _TensorSubclass(torch.Tensor):
    pass


def test_round_trip_keeps_tensors_config_and_extras(tmp_path):
    state = _model_state()
    config = {"backbone": "tiny_cnn", "lr": 0.01, "frames": [8, 16], "patch": (96, 96), "amp": False,
              "note": None}
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model_state=state, config=config, epoch=3, history=[{"loss": 1.5}])
    loaded = load_checkpoint(path)
    assert loaded["config"] == config
    assert loaded["epoch"] == 3 and loaded["history"] == [{"loss": 1.5}]
    assert loaded["format_version"] == FORMAT_VERSION
    assert loaded["adafocus_version"] == package_version() != ""
    assert loaded["model_state"].keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(loaded["model_state"][key], tensor)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.parametrize(
    "config, where",
    [
        ({"optim": {"lr": np.float64(0.1)}}, "config.optim.lr"),
        ({"sizes": [1, 2, {"bad": object()}]}, "config.sizes[2].bad"),
        ({"t": _TensorSubclass(torch.ones(2))}, "config.t"),
    ],
)
def test_non_plain_values_are_rejected_by_name_and_nothing_is_written(tmp_path, config, where):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(CheckpointError, match=f"entry {re.escape(where)} is a"):
        save_checkpoint(path, model_state=_model_state(), config=config)
    assert not path.exists()


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model_state=_model_state(), config={"epoch": 1})
    with pytest.raises(CheckpointError):
        save_checkpoint(path, model_state=_model_state(), config={"epoch": 2, "bad": {1, 2}})
    assert load_checkpoint(path)["config"] == {"epoch": 1}


def test_reserved_extra_names_and_bad_keys_are_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path / "c.pt", model_state={}, config={}, format_version=7)
    with pytest.raises(CheckpointError, match="key"):
        save_checkpoint(tmp_path / "c.pt", model_state={}, config={(1, 2): "tuple key"})


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model_state": {}, "format_version": 1, "payload": _CodeOnLoad(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="unsafe/untrusted") as info:
        load_checkpoint(evil)
    assert "system" in str(info.value)  # names the blocked callable
    assert not marker.exists()

    # Control: the same bytes do run code under a full unpickler, so the check above is meaningful.
    control_marker = tmp_path / "control"
    control = tmp_path / "control.pt"
    torch.save({"payload": _CodeOnLoad(str(control_marker))}, control)
    torch.load(control, weights_only=False)
    assert control_marker.exists()


def test_raw_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps(_CodeOnLoad(str(marker)), protocol=2))
    with pytest.raises(CheckpointError, match="unsafe"):
        load_checkpoint(path)
    assert not marker.exists()


def test_missing_truncated_and_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt")

    good = tmp_path / "good.pt"
    save_checkpoint(good, model_state=_model_state(), config={})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(truncated)

    text = tmp_path / "notes.pt"
    text.write_text("just some text", encoding="utf-8")
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(text)

    plain_state = tmp_path / "plain.pt"
    torch.save(_model_state(), plain_state)
    with pytest.raises(CheckpointError, match="not an adafocus checkpoint"):
        load_checkpoint(plain_state)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format_version": FORMAT_VERSION + 1, "model_state": {}}, path)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)
