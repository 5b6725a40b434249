"""The compute analysis: every figure checked against an independent measurement, the chapter's
own numbers reproduced, and `alexnet analyze` / `alexnet bench` end to end."""

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from alexnet.chapter import chapter_figures
from alexnet.cli import main
from alexnet.costs import OPTIMIZER_STATE, layer_costs, training_memory
from alexnet.hardware import DEVICES, measure_device
from alexnet.models import MODELS, build_model, get_spec
from alexnet.roofline import analyze, compute_bound_from, is_memory_bound, roofline_time

H100 = DEVICES["h100"]


def _leaf_order(model, x) -> dict[str, int]:
    """Each leaf module's qualified name -> the position of its call in a forward pass."""
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, a, name=name: order.append(name))
        for name, m in model.named_modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return {f"{model.__class__.__name__}.{name}": i for i, name in enumerate(order)}


def _leaves_in_order(model, x) -> list:
    modules = dict(model.named_modules())
    return [modules[name.split(".", 1)[1]] for name in _leaf_order(model, x)]


def _counted(model, x):
    """FLOPs of forward and backward per layer index, as torch.utils.flop_counter counts them."""
    names = _leaf_order(model, x)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    fwd, bwd = {}, {}
    for name, ops in counter.get_flop_counts().items():
        if name in names:
            for op, n in ops.items():
                backward = "backward" in str(op) or str(op) == "aten.mm"  # linear's forward is addmm
                side = bwd if backward else fwd
                side[names[name]] = side.get(names[name], 0) + n
    return fwd, bwd


def _counter_ignores_groups() -> bool:
    """torch's counter takes the weight gradient of a grouped convolution to cost ``groups`` times
    its forward pass; pytorch/pytorch#183405 divides by the groups. True where it still does."""
    conv = nn.Conv2d(4, 4, 3, groups=2, device="meta")
    with FlopCounterMode(display=False) as counter:
        conv(torch.zeros(1, 4, 5, 5, device="meta")).sum().backward()
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    return counts["aten.convolution_backward"] == 2 * counts["aten.convolution"]


@pytest.mark.parametrize("name", list(MODELS))
def test_flops_of_both_passes_agree_exactly_with_torch_flop_counter(name):
    res = get_spec(name).resolution
    # On the meta device the counter sees every op's shapes without doing the arithmetic.
    model = build_model(name).to("meta")
    x = torch.zeros(2, 1, res, res, device="meta")
    costs = layer_costs(build_model(name), (2, 1, res, res))
    groups = {
        c.index: getattr(layer, "groups", 1) if _counter_ignores_groups() else 1
        for c, layer in zip(costs, _leaves_in_order(model, x))
    }
    fwd, bwd = _counted(model, x)
    assert {c.index: c.fwd_flops for c in costs if c.fwd_flops} == fwd
    assert {c.index: c.bwd_input_flops + c.bwd_weight_flops * groups[c.index] for c in costs if c.bwd_flops} == bwd

    # In training the image needs no gradient, nor anything before the first trained layer.
    first = next(
        c.index
        for c, layer in zip(costs, _leaves_in_order(model, x))
        if any(p.requires_grad for p in layer.parameters())
    )
    # Input gradients alone: freeze the weights, ask for the image's gradient.
    for p in model.parameters():
        p.requires_grad_(False)
    _, bwd_input = _counted(model, x.requires_grad_())
    assert all(c.bwd_input_flops == 0 for c in costs[: first + 1])
    assert {c.index: c.bwd_input_flops for c in costs if c.index > first and c.bwd_input_flops} == {
        i: n for i, n in bwd_input.items() if i > first
    }


def test_a_pool_after_a_residual_sum_moves_its_input_output_and_indices_only():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2)

        def forward(self, x):
            return self.pool(self.conv(x) + x)  # the pool's input comes from no layer

    pool = layer_costs(Block(), (1, 4, 8, 8), device_kind="cpu")[1]
    x, y = 4 * 8 * 8 * 4, 4 * 4 * 4 * 4
    assert pool.fwd_bytes == x + y + 4 * 4 * 4 * 8  # the int64 indices, and the input read once


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels", [1, 3])
def test_saved_activation_bytes_agree_with_what_autograd_saves(name, channels):
    res = get_spec(name).resolution
    model = build_model(name, channels)
    x = torch.rand(2, channels, res, res)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in weights:  # a view saved twice (flatten, weight.t()) is one tensor
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    estimate = sum(c.saved_bytes for c in layer_costs(model, tuple(x.shape), device_kind="cpu"))
    assert estimate == pytest.approx(sum(saved.values()), rel=0.02)


def test_fc_layers_are_memory_bound_at_batch_1_and_compute_bound_at_batch_128():
    an = analyze("alexnet", (1, 224, 224), 128, H100)
    for c1, c in zip(an.layers1, an.layers):
        if c.kind == "fc" and c.params > 1_000_000:
            assert is_memory_bound(c1.fwd_flops, c1.fwd_bytes, H100, "fp32")
            assert c1.fwd_intensity == pytest.approx(0.5, abs=0.01)  # 2 FLOPs per 4-byte weight
            assert not is_memory_bound(c.fwd_flops, c.fwd_bytes, H100, "fp32")
        if c.kind == "conv" and c.index > 0:
            assert not is_memory_bound(c1.fwd_flops, c1.fwd_bytes, H100, "fp32")


@pytest.mark.parametrize("dtype, batch", [("fp32", 41), ("bf16", 336)])
def test_fc1_turns_compute_bound_on_h100_exactly_at_the_predicted_batch(dtype, batch):
    fc1 = next(c for c in analyze("alexnet", (1, 224, 224), 1, H100, dtype).layers if c.label == "fc1")
    assert compute_bound_from(fc1, H100, dtype) == batch
    for b, memory_bound in ((batch - 1, True), (batch, False)):
        c = next(c for c in analyze("alexnet", (1, 224, 224), b, H100, dtype).layers if c.label == "fc1")
        assert is_memory_bound(c.fwd_flops, c.fwd_bytes, H100, dtype) is memory_bound


def test_fc_layers_hold_the_parameters_and_convolutions_do_the_arithmetic():
    t = analyze("alexnet", (1, 224, 224), 128, H100).totals()
    assert t["fc"]["params"] / t["all"]["params"] > 0.9
    assert t["conv"]["fwd_flops"] / t["all"]["fwd_flops"] > 0.95
    assert 1.9 < t["all"]["bwd_flops"] / t["all"]["fwd_flops"] < 2.0  # the first conv has no input gradient


def test_fc_layers_dominate_inference_time_at_batch_1_but_not_training_at_batch_128():
    t = analyze("alexnet", (1, 224, 224), 128, H100).totals()
    assert t["fc"]["fwd_time_batch1"] > t["conv"]["fwd_time_batch1"]
    assert t["conv"]["fwd_time"] + t["conv"]["bwd_time"] > 10 * (t["fc"]["fwd_time"] + t["fc"]["bwd_time"])


def test_training_memory_adds_one_weight_copy_per_optimizer_state():
    an = analyze("alexnet", (1, 224, 224), 128, H100)
    params = sum(c.params for c in an.layers)
    m = {opt: training_memory(an.layers, "fp32", opt)["total"] for opt in OPTIMIZER_STATE}
    assert m["sgd-momentum"] - m["sgd"] == m["adam"] - m["sgd-momentum"] == 4 * params
    inference = an.memory()["inference, batch 1"]
    assert inference["weights"] > 50 * inference["activations"]  # at batch 1 weights are the memory


def test_roofline_time_is_the_slower_of_arithmetic_and_memory_traffic():
    assert roofline_time(H100.peak("fp32"), 1, H100, "fp32") == pytest.approx(1.0)
    assert roofline_time(1, H100.bandwidth, H100, "fp32") == pytest.approx(1.0)


def test_measured_device_reports_positive_peak_and_bandwidth():
    spec = measure_device("cpu", dtypes=("fp32",), repeats=1, gemm_n=256, copy_numel=2**20)
    assert spec.peak("fp32") > 1e8 and spec.bandwidth > 1e8 and "measured" in spec.about


def test_chapter_164_MB_is_MiB_of_fc_weights_and_81_MFLOPs_matches_no_unit():
    f = chapter_figures()
    assert f["fc_weights"] == 6400 * 4096 + 4096 * 4096 == 41 * 2**20
    assert f["fc_weight_MiB"] == 164.0  # fp32 weights, binary megabytes, no biases
    assert round(f["fc_weight_MB"], 1) == 172.0
    assert f["fc_flops"] == 85_983_232 and f["fc_binary_MFLOPs"] == 82.0 and round(f["fc_MFLOPs"], 1) == 86.0


def test_conv_to_fc_flop_ratio_for_1_and_3_input_channels():
    f = chapter_figures()
    assert f["fc_flops_1ch"] == f["fc_flops_3ch"] == 86_065_152
    conv1_1ch = 2 * 96 * 54 * 54 * 11 * 11  # only the first convolution sees the channels
    assert f["conv_flops_3ch"] - f["conv_flops_1ch"] == 2 * conv1_1ch
    assert round(f["conv_fc_ratio_1ch"], 1) == 20.8 and round(f["conv_fc_ratio_3ch"], 1) == 22.4


def test_alexnet_costs_thousands_of_lenets_in_compute_and_hundreds_in_parameters():
    f = chapter_figures()
    assert f["lenet_params"] == 61_706 and f["alexnet_params"] == 46_764_746
    assert f["lenet_flops"] == 833_040 and f["alexnet_flops"] == 1_876_292_352
    assert round(f["flops_ratio"]) == 2252 and round(f["params_ratio"]) == 758


# ---------------------------------------------------------------------------------------------
# The command line, in process


def test_analyze_prints_layers_totals_memory_and_answers(capsys, tmp_path):
    assert (
        main(
            [
                "analyze",
                "--model",
                "alexnet",
                "--input",
                "1,224,224",
                "--batch",
                "128",
                "--plot",
                str(tmp_path / "roofline.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for text in (
        "conv1",
        "fc3",
        "128x6400",
        "training adam, batch 128",
        "fully connected layers hold 92.0%",
        "memory-bound",
        "compute-bound",
    ):
        assert text in out, text
    assert (tmp_path / "roofline.png").stat().st_size > 10_000


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown"])
def test_analyze_formats_carry_the_same_numbers(fmt, capsys):
    assert (
        main(
            [
                "analyze",
                "--model",
                "lenet",
                "--input",
                "1,28,28",
                "--batch",
                "4",
                "--format",
                fmt,
                "--device",
                "a100",
                "--dtype",
                "bf16",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    flops = 4 * 833_040
    if fmt == "json":
        assert sum(layer["fwd_flops"] for layer in json.loads(out)["layers"]) == flops
    elif fmt == "csv":
        assert sum(int(r["fwd_flops"]) for r in csv.DictReader(out.splitlines())) == flops
    else:
        assert "| conv1 |" in out and "|---:|" in out


def test_analyze_chapter_explains_164_MB_and_81_MFLOPs(capsys):
    assert main(["analyze", "--chapter"]) == 0
    out = capsys.readouterr().out
    assert "164.00 MiB" in out and "86.0 MFLOPs" in out and "ratio 2,252x" in out


def test_bench_writes_table_and_plot(capsys, tmp_path):
    assert (
        main(
            [
                "bench",
                "--model",
                "lenet",
                "--batch-sizes",
                "8,4",
                "--steps",
                "1",
                "--warmup",
                "1",
                "--device",
                "cpu",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "bench.csv").read_text().splitlines()))
    assert [int(r["batch"]) for r in rows] == [4, 8]
    assert all(float(r["images_per_s"]) > 0 and r["peak_source"] == "process peak RSS" for r in rows)
    assert "| 4 |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def test_bench_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from alexnet import bench
    from alexnet.runs import RunError

    out = tmp_path / "bench"
    rows = [{"batch": 4, "images_per_s": 10.0, "step_ms": 400.0, "est_train_MB": 1.0, "peak_MB": 2.0}]
    rows[0]["peak_source"] = "process peak RSS"
    bench.write_results(rows, "first sweep", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing(self, fname, **kw):  # the disk fills half-way through the figure
        if isinstance(fname, (str, Path)):
            Path(fname).write_bytes(b"\x89PNG half")
        else:
            fname.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", failing)
    with pytest.raises((RunError, OSError), match="(?i)no space left"):
        bench.write_results(rows, "second sweep", out)
    assert (out / "bench.png").read_bytes() == before["bench.png"]  # the first sweep's figure, whole
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temporary left beside it


def test_bench_accuracy_epochs_trains_each_batch_with_linearly_scaled_lr(capsys, tmp_path, idx_dir):
    assert (
        main(
            [
                "bench",
                "--model",
                "lenet-relu",
                "--batch-sizes",
                "16,32",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--device",
                "cpu",
                "--accuracy-epochs",
                "1",
                "--preset",
                "cpu",
                "--dataset",
                "mnist",
                "--data-dir",
                str(idx_dir),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "bench.csv").read_text().splitlines()))
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05 * 16 / 128, 0.05 * 32 / 128])
    # Each row's accuracy is its own training run's: that batch size, that rate, its last epoch.
    for r in rows:
        run = tmp_path / f"batch{r['batch']}"
        config = json.loads((run / "config.json").read_text())["train"]
        assert (config["batch_size"], config["lr"]) == (int(r["batch"]), pytest.approx(float(r["lr"])))
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert float(r["val_acc"]) == pytest.approx(last["val_acc"], abs=1e-6)


def test_bench_refuses_a_batch_that_cannot_fit_before_allocating_it(capsys, tmp_path):
    from conftest import memory_cap

    with memory_cap(3 * 2**30):  # were the check gone, the allocation fails here, not the machine
        assert (
            main(
                [
                    "bench",
                    "--model",
                    "alexnet",
                    "--batch-sizes",
                    "8,30000",
                    "--steps",
                    "1",
                    "--warmup",
                    "0",
                    "--device",
                    "cpu",
                    "--out",
                    str(tmp_path),
                ]
            )
            == 2
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch 30000: training alexnet at 224x224 needs about" in err[0], err
    assert "more than the" in err[0] and not (tmp_path / "bench.csv").exists()


def test_an_allocation_failure_anywhere_is_one_line(capsys, tmp_path, monkeypatch):
    from conftest import memory_cap

    from alexnet import bench

    monkeypatch.setattr(bench, "refuse_what_cannot_fit", lambda *a, **k: None)  # as if the estimate were low
    with memory_cap(1 * 2**30):
        assert (
            main(
                [
                    "bench",
                    "--model",
                    "alexnet",
                    "--batch-sizes",
                    "30000",
                    "--steps",
                    "1",
                    "--warmup",
                    "0",
                    "--device",
                    "cpu",
                    "--out",
                    str(tmp_path),
                ]
            )
            == 2
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alexnet: error: out of memory (") and "Traceback" not in err[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["analyze", "--model", "vgg"], "unknown model 'vgg'"),
        (["analyze", "--input", "1,2,x"], "malformed input shape"),
        (["analyze", "--input", "1,28,28"], "layer 5 (MaxPool2d)"),
        (["analyze", "--input", "4,1,224,224", "--batch", "8"], "give it once"),
        (["bench", "--model", "vgg"], "unknown model 'vgg'"),
        (["bench", "--model", "lenet", "--batch-sizes", "8,x"], "malformed batch sizes"),
        (["bench", "--model", "alexnet", "--resolution", "28", "--batch-sizes", "2"], "layer 5 (MaxPool2d)"),
        (
            ["analyze", "--input", "1,100000,100000"],
            "input 1x100000x100000 is too large for this network: layer 14 (Linear) takes 6400 features",
        ),
        (["bench", "--model", "lenet", "--batch-sizes", "8,2000000"], "--batch-sizes: 2000000 is outside 1..1048576"),
    ],
)
def test_bad_input_gives_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize(
    "flag, value, bounds",
    [
        ("--steps", "0", "1..100000"),
        ("--steps", "1000000000", "1..100000"),
        ("--warmup", "-1", "0..100000"),
        ("--in-channels", "0", "1..64"),
        ("--resolution", "0", "1..1024"),  # was: silently the model's own side
        ("--resolution", "100000", "1..1024"),
        ("--accuracy-epochs", "-1", "0..100000"),
        ("--limit-train", "0", "1..2147483648"),
        ("--limit-test", "-5", "1..2147483648"),
        ("--threads", "0", "1..1024"),
        ("--threads", "x", None),
    ],
)
def test_every_integer_flag_of_bench_is_bounded_in_one_line(flag, value, bounds, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--model", "lenet", "--batch-sizes", "2", "--device", "cpu", flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"argument {flag}: " + (
        f"{value} is outside {bounds}" if bounds else f"expected an integer, not {value!r}"
    )
    assert len(err) == 1 and expected in err[0], err


def test_bench_bounds_resolution_epochs_and_batch_as_the_configuration_does():
    from alexnet.bench import MAX_BATCH
    from alexnet.cli import build_parser
    from alexnet.config import Config, ConfigError

    bench = build_parser().parse_args(["bench", "--resolution", "1024", "--accuracy-epochs", "100000"])
    cfg = Config(preset="test").replace(resolution=bench.resolution, epochs=bench.accuracy_epochs, batch_size=MAX_BATCH)
    for too_big in (dict(resolution=1025), dict(epochs=100_001), dict(batch_size=MAX_BATCH + 1)):
        with pytest.raises(ConfigError):
            cfg.replace(**too_big)
