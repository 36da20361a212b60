"""Backbone registry: shapes, strides, registration, and loading torchvision-layout checkpoints."""
from adafocus.core._torchvision_compat import install_torchvision_shim

install_torchvision_shim()  # before torchvision is imported below
import pytest
import torch
import torchvision.models
from adafocus.core.backbones import Backbone, create_backbone, list_backbones, register_backbone
from adafocus.core.backbones import base as backbones
from adafocus.core.weights import WeightsError


def test_registry_lists_builtins_and_rejects_unknown_names():
    assert {"mobilenet_v2", "resnet50", "resnet18", "tiny_cnn"} <= set(list_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'.*mobilenet_v2.*tiny_cnn"):
        create_backbone("resnet51")


@pytest.mark.parametrize(
    "name, size, feature_dim",
    [("mobilenet_v2", 64, 1280), ("resnet18", 64, 512), ("resnet50", 64, 2048)],
)
def test_torchvision_backbones_give_final_feature_map(name, size, feature_dim):
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    assert (backbone.name, backbone.feature_dim, backbone.stride) == (name, feature_dim, 32)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feature_map = backbone(x)
        pooled = backbone.pooled(x)
    assert feature_map.shape == (2, feature_dim, size // 32, size // 32)
    torch.testing.assert_close(pooled, feature_map.mean(dim=(2, 3)))


def test_tiny_cnn_channels_and_stride_follow_its_arguments():
    backbone = create_backbone("tiny_cnn", width=8, strides=(1, 2, 2, 2, 2), in_chans=1)
    assert backbone.feature_dim == 32 and backbone.stride == 16
    assert backbone(torch.randn(3, 1, 64, 48)).shape == (3, 32, 4, 3)
    assert create_backbone("tiny_cnn", width=4, strides=(2,)).feature_dim == 4
    with pytest.raises(ValueError, match="positive strides"):
        create_backbone("tiny_cnn", strides=(1, 0))


def _stripes(count: int, vertical: bool, generator: torch.Generator) -> torch.Tensor:
    """[count, 3, 16, 16] period-2 stripes with random phase and contrast plus noise."""
    coords = torch.arange(16)
    phase = torch.randint(0, 2, (count, 1, 1), generator=generator)
    lines = (coords[None, None, :] if vertical else coords[None, :, None]) + phase
    pattern = (lines % 2).float() * (0.5 + torch.rand(count, 1, 1, generator=generator))
    noisy = pattern + 0.2 * torch.randn(count, 16, 16, generator=generator)
    return noisy[:, None].expand(count, 3, 16, 16).contiguous()


def _stripe_orientation_accuracy(front: torch.nn.Module) -> float:
    """Train front -> tiny_cnn -> GAP -> linear on vertical vs horizontal stripes; held-out accuracy."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    backbone = create_backbone("tiny_cnn", width=8)
    model = torch.nn.Sequential(front, backbone, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(backbone.feature_dim, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        x = torch.cat([_stripes(16, True, generator), _stripes(16, False, generator)])
        y = torch.cat([torch.zeros(16), torch.ones(16)]).long()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x = torch.cat([_stripes(64, True, generator), _stripes(64, False, generator)])
    y = torch.cat([torch.zeros(64), torch.ones(64)]).long()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_tiny_cnn_resolves_period_two_patterns():
    """Vertical vs horizontal period-2 stripes share mean and histogram; only fine detail differs."""
    assert _stripe_orientation_accuracy(torch.nn.Identity()) > 0.95
    # Control: a 2x2 average pool in front erases the pattern: the task needs full resolution.
    assert _stripe_orientation_accuracy(torch.nn.AvgPool2d(2)) < 0.7


def test_new_backbone_needs_only_a_decorated_factory():
    name = "test_only_identity"
    try:
        @register_backbone(name)
        def _identity(channels: int = 5) -> Backbone:
            return Backbone(torch.nn.Identity(), name=name, feature_dim=channels, stride=1)

        assert name in list_backbones()
        backbone = create_backbone(name, channels=7)
        assert backbone.feature_dim == 7
        assert backbone.pooled(torch.ones(2, 7, 3, 3)).shape == (2, 7)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone(name)(_identity)
    finally:
        backbones._REGISTRY.pop(name, None)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_torchvision_checkpoint_loads_strictly_and_matches_torchvision(tmp_path, name):
    torch.manual_seed(1)
    reference = getattr(torchvision.models, name)().eval()
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": reference.state_dict()}, path)

    torch.manual_seed(2)
    backbone = create_backbone(name, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        if name == "mobilenet_v2":
            expected = reference.features(x)
        else:
            expected = torch.nn.Sequential(*list(reference.children())[:-2])(x)
        torch.testing.assert_close(backbone(x), expected)


def test_own_layout_round_trips_and_wrong_architecture_is_refused(tmp_path):
    torch.manual_seed(0)
    trained = create_backbone("tiny_cnn", width=4)
    path = tmp_path / "tiny.pt"
    torch.save(trained.state_dict(), path)
    loaded = create_backbone("tiny_cnn", width=4, pretrained=str(path))
    for key, tensor in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)
    with pytest.raises(WeightsError, match="do not fit"):
        create_backbone("tiny_cnn", width=8, pretrained=str(path))

    resnet18_file = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet18_file)
    with pytest.raises(WeightsError, match="missing keys"):
        create_backbone("resnet50", pretrained=str(resnet18_file))
    with pytest.raises(WeightsError, match="is a .*mobilenet_v2 checkpoint"):
        create_backbone("mobilenet_v2", pretrained=str(resnet18_file))
