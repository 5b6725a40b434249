"""The networks: the chapter's shapes, parameter counts, initialisation, and generic health."""

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from alexnet.models import MODELS, UnknownModel, build_model, get_spec
from alexnet.tracing import InputTooSmall, summary, trace

CHAPTER_LISTING = [  # D2L 8.1, layer_summary((1, 1, 224, 224)), layers with parameters or a new shape
    ("Conv2d", (1, 96, 54, 54)),
    ("ReLU", (1, 96, 54, 54)),
    ("MaxPool2d", (1, 96, 26, 26)),
    ("Conv2d", (1, 256, 26, 26)),
    ("ReLU", (1, 256, 26, 26)),
    ("MaxPool2d", (1, 256, 12, 12)),
    ("Conv2d", (1, 384, 12, 12)),
    ("ReLU", (1, 384, 12, 12)),
    ("Conv2d", (1, 384, 12, 12)),
    ("ReLU", (1, 384, 12, 12)),
    ("Conv2d", (1, 256, 12, 12)),
    ("ReLU", (1, 256, 12, 12)),
    ("MaxPool2d", (1, 256, 5, 5)),
    ("Flatten", (1, 6400)),
    ("Linear", (1, 4096)),
    ("ReLU", (1, 4096)),
    ("Dropout", (1, 4096)),
    ("Linear", (1, 4096)),
    ("ReLU", (1, 4096)),
    ("Dropout", (1, 4096)),
    ("Linear", (1, 10)),
]


def test_alexnet_output_shapes_match_chapter():
    rows = summary("alexnet", (1, 1, 224, 224))
    assert [(r.name, r.output_shape) for r in rows] == CHAPTER_LISTING


def test_alexnet_parameter_count_by_hand():
    conv = [(1, 96, 11), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    fc = [(6400, 4096), (4096, 4096), (4096, 10)]
    expected = sum(i * o * k * k + o for i, o, k in conv) + sum(i * o + o for i, o in fc)
    model = build_model("alexnet")
    assert sum(p.numel() for p in model.parameters()) == expected == 46_764_746
    assert sum(r.params for r in summary("alexnet", (1, 1, 224, 224))) == expected


def test_fc_layers_hold_most_parameters_and_conv_layers_most_flops():
    rows = summary("alexnet", (1, 1, 224, 224))
    fc_params = sum(r.params for r in rows if r.name == "Linear")
    conv_flops = sum(r.flops for r in rows if r.name == "Conv2d")
    assert fc_params / sum(r.params for r in rows) > 0.9
    assert conv_flops / sum(r.flops for r in rows) > 0.9


@pytest.mark.parametrize("name", list(MODELS))
def test_summary_flops_agree_with_torch_flop_counter(name):
    res = get_spec(name).resolution
    model = build_model(name)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(2, 1, res, res))
    assert sum(r.flops for r in trace(model, (2, 1, res, res))) == counter.get_total_flops()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_model_gives_finite_logits_and_every_trained_parameter_a_gradient(name, channels):
    res = get_spec(name).resolution
    model = build_model(name, in_channels=channels, num_classes=7, seed=0)
    logits = model(torch.rand(2, channels, res, res))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, pname
        else:  # only speednet-white's whitening conv is frozen
            assert p.grad is None and pname == "0.0.weight", pname


def test_weights_are_xavier_uniform():
    model = build_model("alexnet", seed=0)
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            w = layer.weight
            fan_in = w[0].numel()
            fan_out = w.shape[0] * (w[0, 0].numel() if w.ndim == 4 else 1)
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert w.abs().max() <= bound
            # A uniform on [-b, b] has std b / sqrt(3): far from PyTorch's default kaiming bound.
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_build_is_deterministic_given_a_seed():
    a, b = build_model("alexnet28", seed=3), build_model("alexnet28", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_simplified_alexnet_is_much_cheaper():
    full = sum(r.flops for r in summary("alexnet", (1, 1, 224, 224)))
    small = sum(r.flops for r in summary("alexnet-small", (1, 1, 224, 224)))
    native = sum(r.flops for r in summary("alexnet28", (1, 1, 28, 28)))
    assert small < full / 3 and native < full / 30


def test_unknown_model_is_named():
    with pytest.raises(UnknownModel, match="unknown model 'vgg'"):
        build_model("vgg")


def test_too_small_input_names_the_layer():
    with pytest.raises(InputTooSmall, match=r"layer 5 \(MaxPool2d\)"):
        summary("alexnet", (1, 1, 28, 28))
