"""Training: it learns, it resumes exactly, it survives interruption and bad losses."""

import json
import math

import pytest
import torch
from conftest import interrupt_at_batch, tiny_cfg

from alexnet import device as V
from alexnet import runs as R
from alexnet import session as S
from alexnet import train as T
from alexnet.config import PRESETS, Config, ConfigError


def tiny(data_dir, **kw) -> Config:
    """conftest's tiny recipe on the smaller lenet-relu."""
    return tiny_cfg(data_dir, **{"model": "lenet-relu", **kw})


def test_presets_hold_the_chapter_recipe():
    d2l = PRESETS["d2l"]
    assert (d2l.train.model, d2l.train.lr, d2l.train.batch_size, d2l.train.epochs) == ("alexnet", 0.01, 128, 10)
    assert d2l.train.momentum == 0 and d2l.train.schedule == "constant" and not d2l.data.normalize
    assert PRESETS["cpu"].train.model == "alexnet28"
    assert Config.from_dict(json.loads(json.dumps(PRESETS["fast"].to_dict()))) == PRESETS["fast"]


def test_learning_rate_warms_up_then_decays_to_zero():
    cfg = PRESETS["fast"]
    lrs = [T.lr_at(s, 1000, 100, cfg) for s in range(1000)]
    assert lrs[0] == pytest.approx(cfg.train.lr / 100) and max(lrs) == pytest.approx(cfg.train.lr)
    assert lrs[99] == pytest.approx(cfg.train.lr) and lrs[-1] < cfg.train.lr * 1e-4
    assert T.lr_at(500, 1000, 100, PRESETS["d2l"]) == 0.01


def test_training_on_fashion_mnist_learns(fashion_dir, tmp_path):
    # 3 short epochs over 6000 real images (a 0.25-epoch warm-up); chance is 0.10. How far past
    # chance depends on the seed and the CPU's bf16 arithmetic: 0.66-0.74 over seeds 0-1 with and
    # without bf16 on a Xeon with AMX, above 0.70 on an EPYC; 0.5 says it learned, on any of them.
    cfg = PRESETS["cpu"].replace(
        data_dir=str(fashion_dir), epochs=3, warmup_epochs=0.25, limit_train=6000, limit_test=2000
    )
    result = T.fit(cfg, tmp_path / "run", progress=False, quiet=True)
    assert result.final["val_acc"] > 0.50
    assert result.metrics[1]["train_loss"] < result.metrics[0]["train_loss"]
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "curves.png", "last.pt", "best.pt"):
        assert (tmp_path / "run" / name).exists(), name


def _same_run(a, b):
    for ma, mb in zip(a.metrics, b.metrics, strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert ma[key] == pytest.approx(mb[key], rel=1e-5, abs=1e-6), key
    wa = R.load_checkpoint(a.run_dir / "last.pt")["model"]
    wb = R.load_checkpoint(b.run_dir / "last.pt")["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])


def test_resume_equals_uninterrupted_training(idx_dir, tmp_path):
    # The chapter's constant learning rate, with warm-up, augmentation and dropout all drawing random numbers.
    cfg = tiny(idx_dir, crop_padding=2, flip=True, warmup_epochs=0.5)
    straight = T.fit(cfg, tmp_path / "a", progress=False, quiet=True)
    T.fit(cfg.replace(epochs=1), tmp_path / "b", progress=False, quiet=True)
    resumed = T.fit(cfg, tmp_path / "b", resume=True, overrides={"epochs": 2}, progress=False, quiet=True)
    _same_run(straight, resumed)


def test_a_run_saved_before_keyed_streams_resumes_exactly_with_its_own_streams(idx_dir, tmp_path):
    # Runs started before seeds.py record no seed_streams: they drew their data order, crops, flips
    # and dropout from offsets of the seed, and a resume must go on drawing them that way.
    cfg = tiny(idx_dir, crop_padding=2, flip=True, seed_streams="offsets")
    straight = T.fit(cfg, tmp_path / "a", progress=False, quiet=True)
    T.fit(cfg.replace(epochs=1), tmp_path / "b", progress=False, quiet=True)
    for name in ("last.pt", "best.pt"):  # as the earlier code wrote them
        ckpt = torch.load(tmp_path / "b" / name, weights_only=True)
        del ckpt["config"]["train"]["seed_streams"]
        torch.save(ckpt, tmp_path / "b" / name)
    record = json.loads((tmp_path / "b" / "config.json").read_text())
    del record["train"]["seed_streams"]
    (tmp_path / "b" / "config.json").write_text(json.dumps(record))
    resumed = T.fit(cfg, tmp_path / "b", resume=True, overrides={"epochs": 2}, progress=False, quiet=True)
    _same_run(straight, resumed)
    assert R.load_checkpoint(tmp_path / "b" / "last.pt")["cfg"].train.seed_streams == "offsets"


def test_interrupted_cosine_run_resumes_to_the_same_result(idx_dir, tmp_path, monkeypatch):
    cfg = tiny(idx_dir, schedule="cosine", crop_padding=2)
    straight = T.fit(cfg, tmp_path / "a", progress=False, quiet=True)
    restore = interrupt_at_batch(monkeypatch, 6)  # 4 training + 1 evaluation batches, then epoch 2 begins
    assert T.fit(cfg, tmp_path / "b", progress=False, quiet=True).interrupted
    restore()
    _same_run(straight, T.fit(cfg, tmp_path / "b", resume=True, progress=False, quiet=True))


def test_ctrl_c_saves_a_checkpoint_that_resumes(idx_dir, tmp_path, monkeypatch):
    cfg = tiny(idx_dir, epochs=2)
    restore = interrupt_at_batch(monkeypatch, 7)  # the second training batch of epoch 2
    result = T.fit(cfg, tmp_path / "run", progress=False, quiet=True)
    assert result.interrupted and len(result.metrics) == 1
    ckpt = R.load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] > 0
    restore()
    resumed = T.fit(cfg, tmp_path / "run", resume=True, progress=False, quiet=True)
    assert [m["epoch"] for m in resumed.metrics] == [1, 2] and not resumed.interrupted


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(idx_dir, tmp_path):
    T.fit(tiny(idx_dir, epochs=1), tmp_path / "run", progress=False, quiet=True)
    good = R.load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    # Resume the run with a learning rate that makes the loss blow up.
    ckpt = R.load_checkpoint(tmp_path / "run" / "last.pt")
    ckpt["config"]["train"]["lr"] = 1e12
    R.atomic_write(
        tmp_path / "run" / "last.pt",
        lambda f: torch.save({k: v for k, v in ckpt.items() if k not in ("cfg", "path")}, f),
    )
    with pytest.raises(T.TrainingError, match=r"epoch 2: loss became (nan|inf).*Last good checkpoint: .*last.pt"):
        T.fit(tiny(idx_dir), tmp_path / "run", resume=True, overrides={"epochs": 2}, progress=False, quiet=True)
    kept = R.load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.equal(good[k], kept[k]) for k in good)


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "last.pt"
    R.atomic_write(path, lambda f: torch.save({"v": 1}, f))

    def dies_midway(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        R.atomic_write(path, dies_midway)
    assert torch.load(path)["v"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_bf16_autocast_and_compile_are_used_when_asked_on_cpu(idx_dir, tmp_path, monkeypatch):
    """--amp bf16 --compile on: every step computes its logits in bf16, through a compiled graph
    (no silent fall-back to eager), and the run records both."""
    import torch._dynamo

    dtypes, wrappers, real_step = [], [], T.train_step

    def recording_step(model, optimizer, x, y, **kw):
        loss, logits = real_step(model, optimizer, x, y, **kw)
        dtypes.append(logits.dtype)
        return loss, logits

    class Recorded(V.CompiledOrEager):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            wrappers.append(self)

    monkeypatch.setattr(T, "train_step", recording_step)
    monkeypatch.setattr(S, "CompiledOrEager", Recorded)  # the network placed
    monkeypatch.setattr(T, "CompiledOrEager", Recorded)  # the layers after a stem computed once
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cfg = tiny(idx_dir, epochs=1, amp="bf16", compile="on", limit_train=32, limit_test=16)
    result = T.fit(cfg, tmp_path / "run", progress=False, quiet=True)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert wrappers and all(w.compiled is not None and w._proven for w in wrappers)  # compiled, and it ran
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["system"]
    assert (recorded["amp"], recorded["compile"]) == ("bf16", "on")
    assert math.isfinite(result.final["train_loss"])


def test_bf16_is_used_where_the_hardware_has_it(monkeypatch):
    cpu = torch.device("cpu")
    assert V.bf16_autocast("bf16", cpu) and not V.bf16_autocast("off", cpu)
    for native in (True, False):  # auto: only a CPU with bf16 instructions gains from it
        monkeypatch.setattr(V, "cpu_has_native_bf16", lambda native=native: native)
        assert V.bf16_autocast("auto", cpu) is native


# A step's allocations, over and over: 40 MB tensors, above the largest size glibc's malloc serves
# from its heap by default (32 MB), so each is a fresh mmap whose pages the kernel faults in
# zero-filled (224x224 alexnet's activations at batch 128 are 72 MB).
_STEPS = """
import resource, sys, torch
from alexnet.device import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else False)
for step in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(10_000_000)
    y = x * 2
    del x, y
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_memory_a_step_frees_is_reused_not_faulted_in_again():
    """--malloc keep: once the heap has grown to a step's needs (a few steps), a step reuses what
    the last one freed, where malloc as it comes returns it to the OS and every step faults the
    same pages in again (docs/performance.md)."""
    import subprocess
    import sys

    def faults(mode: str) -> tuple[str, list[int]]:
        out = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, check=True)
        applied, *steps = out.stdout.split()
        return applied, [int(n) for n in steps]

    pages = 2 * 40_000_000 // 4096  # two 40 MB tensors a step, 4 KiB pages
    applied, steps = faults("system")
    assert applied == "False" and steps == [pytest.approx(pages, rel=0.02)] * 12
    applied, steps = faults("keep")
    assert applied == "True" and steps[-4:] == [0, 0, 0, 0]  # 20 runs here: none faulted after its 5th step


def test_cpu_training_keeps_freed_memory_from_its_first_step_unless_asked_not_to(idx_dir, tmp_path, monkeypatch):
    """Kept from the first step on, not before: the one-off buffers of loading the data and fitting a
    frozen stem go back to the OS (docs/performance.md)."""
    calls, real_prepare = [], T.prepare_frozen
    monkeypatch.setattr(S, "keep_freed_memory", lambda: calls.append("keep"))
    monkeypatch.setattr(T, "prepare_frozen", lambda *a: calls.append("stem") or real_prepare(*a))
    monkeypatch.setattr(T, "train_step", lambda *a, real=T.train_step, **k: calls.append("step") or real(*a, **k))
    for malloc, expected in (("keep", ["stem", "keep", "step"]), ("system", ["stem", "step"])):
        calls.clear()
        cfg = tiny(idx_dir, epochs=1, malloc=malloc, limit_train=32, limit_test=16)
        T.fit(cfg, tmp_path / malloc, progress=False, quiet=True)
        assert calls[: len(expected)] == expected and calls.count("keep") == expected.count("keep")
        assert json.loads((tmp_path / malloc / "config.json").read_text())["system"]["malloc"] == malloc


def test_input_too_small_for_the_model_is_a_clear_error(idx_dir, tmp_path):
    with pytest.raises(T.TrainingError, match=r"too small.*layer 5 \(MaxPool2d\)"):
        T.fit(tiny(idx_dir, model="alexnet", resolution=28), tmp_path / "run", progress=False, quiet=True)
    assert not (tmp_path / "run").exists()  # a run that cannot start leaves no empty directory behind


def test_unavailable_device_is_named():
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            V.select_device("cuda")
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        V.select_device("gpu0")


def test_evaluation_memory_is_linear_in_the_number_of_classes():
    # ImageNet-21k's 21841 classes: a classes² confusion matrix alone would be 3.8 GB.
    from conftest import memory_cap

    k = 21841
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, k))
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([5, k - 1])
    with memory_cap(600 * 2**20):
        ev = T.evaluate(model, [(x, y)], device=torch.device("cpu"), amp=False, num_classes=k, confusion=True)
    assert ev["images"] == 2 and ev["class_images"].sum() == 2 and ev["class_images"][k - 1] == 1
    assert ev["confusion"] is None  # above T.MAX_CONFUSION classes only the per-class counts are kept
    small = T.evaluate(
        model[:1],
        [(x.view(2, 4, 1, 1), torch.tensor([0, 3]))],
        device=torch.device("cpu"),
        amp=False,
        num_classes=4,
        confusion=True,
    )
    assert small["confusion"].shape == (4, 4) and small["confusion"].sum() == 2
    assert torch.equal(small["confusion"].diag(), small["class_correct"])
