"""The speedrun (docs/speedrun.md): its network, the analysis of networks that are not a plain
``nn.Sequential``, and MFU figures whose peak no layer of the network can beat."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from alexnet.costs import layer_costs, training_flops
from alexnet.hardware import Peak, measure_peak
from alexnet.models import Residual, build_model
from alexnet.tracing import trace, walk


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
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.Flatten(),
        nn.Linear(16 * 6 * 6, 10),
    )
    peak = measure_peak(model, (4, 1, 6, 6), "fp32", "cpu", repeats=1, shapes=((64, 64, 64), (256, 32, 16)))
    assert peak.conv_label == "conv2" and peak.conv > 0 and peak.gemm > 0
    assert peak.gemm_shape in ((64, 64, 64), (256, 32, 16))
    # The ceiling is the better of the two, so the network's own dominant layer never exceeds it.
    assert peak.flops == max(peak.gemm, peak.conv) >= peak.conv
    assert Peak("fp32", 1.0, (1, 1, 1), 5.0, "conv2").flops == 5.0


# ---------------------------------------------------------------------------------------------
# The recipe in the trainer: presets, one-cycle schedule, evaluation at the end, flip TTA, holdout


def test_speedrun_presets_train_a_speednet_and_evaluate_once_with_flip_tta():
    from alexnet.config import PRESETS

    for name, model, budget in (
        ("speedrun", "speednet-white", "60s"),
        ("speedrun-long", "speednet-white-2x-14", "5min"),
    ):
        cfg = PRESETS[name]
        assert cfg.train.model == model and cfg.train.evaluate == "end" and cfg.data.flip_tta
        assert cfg.train.time_budget == budget and cfg.replace(epochs=7).train.time_budget is None
        assert cfg.train.schedule == "linear" and cfg.data.crop_padding == 0 and cfg.data.holdout == 0


def test_plateau_schedule_cannot_be_built_without_an_evaluation_per_epoch():
    from alexnet.config import PRESETS, ConfigError

    with pytest.raises(ConfigError, match="--evaluate end"):
        PRESETS["speedrun"].replace(schedule="plateau")


def test_linear_schedule_rises_for_the_warm_up_then_falls_to_zero():
    from alexnet.config import PRESETS
    from alexnet.train import lr_at

    cfg = PRESETS["speedrun"]  # 1 warm-up epoch of 5
    lrs = [lr_at(s, 500, 100, cfg) for s in range(500)]
    assert lrs[99] == pytest.approx(cfg.train.lr) and max(lrs) == pytest.approx(cfg.train.lr)
    assert lrs[299] == pytest.approx(cfg.train.lr * 0.5, rel=0.02) and lrs[-1] < cfg.train.lr * 0.01


def test_flip_tta_averages_the_logits_of_an_image_and_its_mirror():
    from alexnet.train import evaluate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(5, 1, 3, 4), torch.tensor([0, 1, 2, 0, 1])
    got = evaluate(model, [(x, y)], device=torch.device("cpu"), amp=False, num_classes=3, flip_tta=True)
    with torch.no_grad():
        logits = (model(x) + model(x.flip(-1))) / 2
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert got["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_holdout_evaluates_on_the_last_training_images(idx_dir):
    from alexnet import data as D
    from alexnet.config import Config

    cfg = Config(preset="test").replace(dataset="mnist", data_dir=str(idx_dir), holdout=10)
    data = D.InMemory(cfg, torch.device("cpu"), batch=8, eval_batch=8)
    full = D.load_dataset("mnist", idx_dir)
    assert len(data) == len(full.train) - 10
    assert torch.equal(data.test.images, full.train.images[-10:])


def test_a_tiny_speedrun_trains_then_evaluates_once(idx_dir, tmp_path):
    from alexnet.config import PRESETS
    from alexnet.train import fit

    cfg = PRESETS["speedrun"].replace(dataset="mnist", data_dir=str(idx_dir), epochs=2, batch_size=16, log_every=2)
    result = fit(cfg, tmp_path / "run", progress=False, quiet=True)
    [row] = result.metrics  # one row: evaluation after the last epoch only
    assert row["epoch"] == 2 and row["eval_time_s"] > 0
    assert row["train_time_s"] + row["eval_time_s"] <= row["epoch_time_s"] + 1e-6
    assert (tmp_path / "run" / "last.pt").exists()


def test_speedrun_benchmark_summarises_seeds_as_mean_std_min_and_time():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "speedrun.py"
    spec = importlib.util.spec_from_file_location("bench_speedrun", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = [
        {"seed": s, "acc": a, "epochs": 5, "train_s": 50.0, "train_eval_s": t, "wall_s": t + 4}
        for s, a, t in ((0, 0.93, 55.0), (1, 0.92, 57.0), (2, 0.94, 59.0))
    ]
    s = bench.summarise("speedrun", runs, [])
    assert s["mean"] == pytest.approx(0.93) and s["std"] == pytest.approx(0.01) and s["min"] == 0.92
    assert s["train_eval_s"] == pytest.approx(57.0) and s["max_train_eval_s"] == 59.0
    assert "`alexnet train --preset speedrun`, seeds 0,1,2" in bench.report(s, runs, "machine")


def test_whitening_conv_makes_the_patches_uncorrelated_with_unit_variance():
    from alexnet.models import WhiteningConv

    torch.manual_seed(0)
    images = torch.nn.functional.avg_pool2d(torch.randn(64, 1, 30, 30), 3, stride=1)  # neighbours correlated
    conv = WhiteningConv(1, eps=0.0)
    assert not conv.fitted and not conv.weight.requires_grad
    conv.fit(images)
    assert conv.fitted and conv.out_channels == 18
    x = torch.cat([images, images.flip(-1)])
    out = torch.nn.functional.conv2d(x, conv.weight[:9])[..., 1:-1, 1:-1]  # the + half, valid positions only
    z = out.permute(1, 0, 2, 3).reshape(9, -1)
    cov = torch.cov(z)
    assert torch.allclose(cov, torch.eye(9), atol=0.05)
    assert torch.equal(conv.weight[9:], -conv.weight[:9])  # both signs: the ReLU after it loses nothing


def test_whitening_filters_count_the_mirror_images_without_making_them():
    from alexnet.models import WhiteningConv

    torch.manual_seed(1)
    # Lit from the left, more or less: the mirror images' patches differ from the images' own.
    ramp = torch.linspace(0, 1, 11) * torch.rand(32, 2, 1, 1)
    images = torch.nn.functional.avg_pool2d(torch.rand(32, 2, 13, 13), 3, stride=1) + ramp
    conv = WhiteningConv(2, eps=1e-3)
    conv.fit(images)
    # The reference: every patch of the images and of their mirror images, in double precision.
    x = torch.cat([images, images.flip(-1)]).double()
    patches = torch.nn.functional.unfold(x, 3).transpose(1, 2).reshape(-1, 18)
    cov = torch.cov(patches.T, correction=0)
    # W^T W = (C + eps)^-1 whatever the signs and bases the eigensolver picks.
    w = conv.weight[:18].double().flatten(1)
    want = torch.linalg.inv(cov + 1e-3 * torch.eye(18, dtype=cov.dtype))
    torch.testing.assert_close(w.T @ w, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_speednet_white_trains_nothing_in_its_frozen_stem_and_counts_no_gradient_for_it():
    model = build_model("speednet-white")
    stem = model[0]
    assert all(not p.requires_grad for p in stem.parameters())
    x = torch.zeros(8, 1, 28, 28)
    meta = build_model("speednet-white").to("meta")
    with FlopCounterMode(display=False) as counter:
        meta(x.to("meta")).sum().backward()
    assert training_flops(meta, tuple(x.shape)) == counter.get_total_flops()
    costs = layer_costs(meta, tuple(x.shape))
    assert costs[0].bwd_flops == 0 and costs[0].fwd_flops > 0


def test_speednet_white_2x_14_is_the_2x_network_with_one_more_conv_at_the_stems_14x14():
    def convs(name):  # (out channels, the side of the map each conv sees), in call order
        rows = trace(build_model(name), (2, 1, 28, 28))
        return [(r.output_shape[1], r.output_shape[-1]) for r in rows if r.name == "Conv2d"]

    assert convs("speednet-white-2x-14") == [(48, 14)] + convs("speednet-white-2x")
    assert convs("speednet-white-2x")[0] == (96, 14)  # the conv the new one feeds, before the first pool


def test_computing_the_frozen_stem_once_per_image_trains_exactly_as_running_it_every_step(
    idx_dir, tmp_path, monkeypatch
):
    from alexnet import data as D
    from alexnet.config import PRESETS
    from alexnet.train import fit

    cfg = PRESETS["speedrun"].replace(
        model="speednet-white", dataset="mnist", data_dir=str(idx_dir), epochs=2, batch_size=16, log_every=2, amp="off"
    )
    cached = fit(cfg, tmp_path / "cached", progress=False, quiet=True)
    calls = []
    monkeypatch.setattr(D.InMemory, "precompute", lambda self, *a, **k: calls.append(1))
    monkeypatch.setattr("alexnet.train.Frozen", type("NotFrozen", (), {}))  # the stem runs in every step
    live = fit(cfg, tmp_path / "live", progress=False, quiet=True)
    assert calls == []
    a = torch.load(tmp_path / "cached" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "live" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and bool(a["0.0.fitted"])
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4), k
    assert cached.final["val_acc"] == pytest.approx(live.final["val_acc"], abs=0.04)


def test_a_stem_cache_that_would_not_fit_in_memory_is_not_made_and_the_run_trains_the_same(
    idx_dir, tmp_path, monkeypatch, capsys
):
    from alexnet import data as D
    from alexnet.config import PRESETS
    from alexnet.train import fit

    cfg = PRESETS["speedrun"].replace(dataset="mnist", data_dir=str(idx_dir), epochs=1, batch_size=16, amp="off")
    cached = fit(cfg, tmp_path / "cached", progress=False, quiet=True)
    made = []
    real = D.InMemory.precompute
    monkeypatch.setattr(D.InMemory, "precompute", lambda self, *a, **k: made.append(real(self, *a, **k)))
    monkeypatch.setattr("alexnet.train.free_memory", lambda device: 10_000)  # 10 kB free
    tight = fit(cfg, tmp_path / "tight", progress=False, quiet=True)
    assert made == []  # it raised before keeping anything
    err = capsys.readouterr().err
    assert "GB of the 0.00 GB free: computing them in every step instead" in err and "Traceback" not in err
    a = torch.load(tmp_path / "cached" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "tight" / "last.pt", weights_only=False)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4), k
    assert tight.final["val_acc"] == pytest.approx(cached.final["val_acc"], abs=0.04)


def test_free_memory_reads_the_hosts_available_memory(tmp_path, monkeypatch):
    from alexnet import device as V

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12345678 kB\n")
    real_path = V.Path
    monkeypatch.setattr(V, "Path", lambda p: meminfo if p == "/proc/meminfo" else real_path(p))
    assert V.free_memory(torch.device("cpu")) == 12345678 * 1024  # MemAvailable, not MemFree
    meminfo.unlink()  # unreadable: what sysconf says is free
    monkeypatch.setattr(V.os, "sysconf", lambda name: {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}[name])
    assert V.free_memory(torch.device("cpu")) == 4096 * 1000


def test_precomputed_batches_are_the_frozen_layers_output_for_the_drawn_images_and_flips(idx_dir):
    from alexnet import data as D
    from alexnet.config import PRESETS

    cfg = PRESETS["speedrun"].replace(dataset="mnist", data_dir=str(idx_dir), batch_size=16)
    live = D.InMemory(cfg, torch.device("cpu"), 16, 16)
    cached = D.InMemory(cfg, torch.device("cpu"), 16, 16)
    frozen = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2))
    cached.precompute(frozen, amp=False)
    with torch.no_grad():
        for (x, y), (f, yc) in zip(live.train(epoch=1), cached.train(epoch=1), strict=True):
            assert torch.equal(y, yc)
            assert torch.allclose(frozen(x), f, atol=1e-6)


def test_speednet_white_needs_an_in_memory_dataset(tmp_path):
    from conftest import make_image_folder

    from alexnet.config import PRESETS
    from alexnet.train import TrainingError, fit

    root = make_image_folder(tmp_path / "folder", per_class=(2, 1), corrupt=False)
    cfg = PRESETS["speedrun"].replace(model="speednet-white", dataset="imagefolder", data_dir=str(root), workers=0)
    with pytest.raises(TrainingError, match="in-memory dataset"):
        fit(cfg, tmp_path / "run", progress=False, quiet=True)
    assert not (tmp_path / "run").exists()


def test_pairwise_max_pool_gives_max_pool2ds_values_and_gradient():
    from alexnet.models import MaxPool2x2

    x = torch.randn(4, 6, 8, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(MaxPool2x2()(x), nn.functional.max_pool2d(x, 2))
        assert torch.equal(MaxPool2x2()(x.bfloat16()), nn.functional.max_pool2d(x.bfloat16(), 2))
    x.requires_grad_()
    MaxPool2x2()(x).sum().backward()  # with a gradient it is max_pool2d itself
    ref = x.detach().clone().requires_grad_()
    nn.functional.max_pool2d(ref, 2).sum().backward()
    assert torch.equal(x.grad, ref.grad)


def test_a_resumed_run_keeps_the_whitening_filters_of_its_checkpoint(idx_dir, tmp_path, monkeypatch):
    from alexnet.config import PRESETS
    from alexnet.models import WhiteningConv
    from alexnet.train import fit

    cfg = PRESETS["speedrun"].replace(
        model="speednet-white", dataset="mnist", data_dir=str(idx_dir), epochs=1, batch_size=16
    )
    fit(cfg, tmp_path / "run", progress=False, quiet=True)
    before = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]["0.0.weight"]

    def refit(self, images):
        raise AssertionError("a resumed run fitted its whitening filters again")

    monkeypatch.setattr(WhiteningConv, "fit", refit)
    result = fit(cfg, tmp_path / "run", resume=True, overrides={"epochs": 2}, progress=False, quiet=True)
    assert result.final["epoch"] == 2
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]["0.0.weight"]
    assert torch.equal(before, after)
