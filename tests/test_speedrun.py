"""The speedrun (docs/speedrun.md): its network, the analysis of networks that are not a plain
``nn.Sequential``, and MFU figures whose peak no layer of the network can beat."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from alexnet.analysis import Peak, layer_costs, measure_peak, trace, training_flops, walk
from alexnet.models import Residual, build_model


def test_speednet_maps_28x28_images_to_logits_through_a_residual_block():
    model = build_model("speednet")
    assert any(isinstance(m, Residual) for m in model.modules())
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_layer_summary_walks_a_network_with_a_skip_connection():
    class Skip(nn.Module):  # not a Sequential: forward adds the input back
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(2, 2, 3, padding=1), nn.Linear(2 * 5 * 5, 3)

        def forward(self, x):
            return self.head((x + self.conv(x)).flatten(1))

    model = Skip()
    rows = trace(model, (4, 2, 5, 5))
    assert [(r.name, r.path) for r in rows] == [("Conv2d", "conv"), ("Linear", "head")]
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(4, 2, 5, 5))
    assert sum(r.flops for r in rows) == counter.get_total_flops()
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())


def test_speednet_flops_of_a_training_step_agree_with_torch_flop_counter():
    model = build_model("speednet").to("meta")
    x = torch.zeros(8, 1, 28, 28, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert training_flops(model, tuple(x.shape)) == counter.get_total_flops()


def test_trace_leaves_batch_norm_statistics_and_the_training_flag_alone():
    model = build_model("speednet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    walk(model, (2, 1, 28, 28))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_alexnet_training_step_is_2_96_forward_passes_not_3():
    model = build_model("alexnet").to("meta")
    forward = sum(c.fwd_flops for c in layer_costs(model, (1, 1, 224, 224)))
    assert training_flops(model, (1, 1, 224, 224)) / forward == pytest.approx(2.96, abs=0.005)


def test_peak_is_at_least_what_the_networks_own_dominant_conv_reaches():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.Flatten(),
                          nn.Linear(16 * 6 * 6, 10))  # fmt: skip
    peak = measure_peak(model, (4, 1, 6, 6), "fp32", "cpu", repeats=1)
    assert peak.conv_label == "conv2" and peak.conv > 0 and peak.gemm > 0
    assert peak.flops == max(peak.gemm, peak.conv)
    # MFU of the dominant conv alone, against this peak, cannot pass 100 %.
    assert Peak("fp32", 1.0, (1, 1, 1), 5.0, "conv2").flops == 5.0
