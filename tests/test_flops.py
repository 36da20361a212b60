"""Measured GMACs: match closed forms exactly and the published backbone costs within 1 %."""
import pytest
import torch
from adafocus.core.backbones import create_backbone
from adafocus.core.flops import CostTable, count_gmacs, format_cost_table, module_gmacs


def test_linear_matches_closed_form_and_scales_with_batch():
    layer = torch.nn.Linear(300, 70)
    assert module_gmacs(layer, (1, 300)) == pytest.approx(300 * 70 / 1e9, rel=1e-12)
    assert module_gmacs(layer, (5, 300)) == pytest.approx(5 * module_gmacs(layer, (1, 300)), rel=1e-12)


@pytest.mark.parametrize("groups", [1, 4])
def test_conv2d_matches_closed_form(groups):
    conv = torch.nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1, groups=groups)
    out_h, out_w = 20, 15  # from 40x30 input at stride 2
    macs = out_h * out_w * 16 * (8 // groups) * 3 * 3
    assert module_gmacs(conv, (1, 8, 40, 30)) == pytest.approx(macs / 1e9, rel=1e-12)
    assert module_gmacs(conv, (3, 8, 40, 30)) == pytest.approx(3 * macs / 1e9, rel=1e-12)


def test_mobilenet_v2_features_at_224_match_published_cost():
    gmacs = module_gmacs(create_backbone("mobilenet_v2"), (1, 3, 224, 224))
    assert gmacs == pytest.approx(0.299511328, rel=0.01)


@pytest.fixture(scope="module")
def resnet50():
    return create_backbone("resnet50")


@pytest.mark.parametrize("size, published", [(96, 0.750725056), (128, 1.334601664), (160, 2.08530016)])
def test_resnet50_without_fc_matches_published_cost(resnet50, size, published):
    assert module_gmacs(resnet50, (1, 3, size, size)) == pytest.approx(published, rel=0.01)


def test_measurement_runs_in_eval_mode_and_restores_each_submodule_flag():
    torch.manual_seed(0)
    backbone = create_backbone("tiny_cnn", width=4, strides=(1, 2))
    backbone.train()
    frozen_bn = backbone.body[0][1]
    frozen_bn.eval()
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    running_means = [m.running_mean.clone() for m in norms]

    gmacs = count_gmacs(backbone.pooled, torch.randn(2, 3, 8, 8))  # a bound method of the module

    assert gmacs == pytest.approx(2 * (8 * 8 * 4 * 3 * 9 + 4 * 4 * 8 * 4 * 9) / 1e9, rel=1e-12)
    # Eval mode during the measurement: BN running statistics untouched.
    assert all(torch.equal(m.running_mean, before) for m, before in zip(norms, running_means, strict=True))
    assert backbone.training and backbone.body[1].training and not frozen_bn.training


def test_plain_function_is_counted_without_gradients():
    weight = torch.randn(64, 32, requires_grad=True)

    def project(x):
        out = x @ weight
        assert not out.requires_grad
        return out

    assert count_gmacs(project, torch.randn(10, 64)) == pytest.approx(10 * 64 * 32 / 1e9, rel=1e-12)


def test_cost_table_and_formatting():
    table = CostTable()
    table.add("glance 16 x mobilenet_v2@224", 4.792)
    table.add("focus 16 x resnet50@128", 21.3536)
    with pytest.raises(ValueError, match="already has a row"):
        table.add("focus 16 x resnet50@128", 1.0)
    assert table.total() == pytest.approx(26.1456)
    text = format_cost_table({**table.to_dict(), "total": table.total()})
    lines = text.splitlines()
    assert lines[0].split() == ["component", "GMACs"]
    assert lines[2].startswith("glance 16 x mobilenet_v2@224") and lines[2].endswith("4.7920")
    assert lines[-1].split() == ["total", "26.1456"]
    assert len({len(line) for line in lines}) == 1  # columns aligned
    with pytest.raises(ValueError):
        format_cost_table({})
