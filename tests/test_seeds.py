"""Every random stream of a run, keyed by (seed, purpose, epoch, step, rank): distinct streams, the
earlier offsets kept for old runs, and a run's initial weights rebuilt from its seed."""

import itertools

import pytest
import torch
from conftest import interrupt_at_batch

from alexnet import data as D
from alexnet import runs as R
from alexnet import train as T
from alexnet.config import PRESETS, Config
from alexnet.models import build_model
from alexnet.seeds import PURPOSES, Seeds, derive, initial_first_conv


def test_every_random_stream_is_distinct_across_purpose_epoch_step_and_rank():
    keys = list(itertools.product((0, 1), PURPOSES, range(4), range(40), range(2)))
    seeds = {derive(*k) for k in keys}
    assert len(seeds) == len(keys)
    # ... and none is a plain small seed, which model initialisation uses (torch.manual_seed(seed)).
    assert not seeds & set(range(1000))


def test_a_runs_streams_are_distinct_through_its_seeds_object():
    s = Seeds(3)
    drawn = (
        [s.order(e) for e in range(10)]
        + [s.augment(e, i) for e in range(10) for i in range(50)]
        + [s.dropout(e, t, r) for e in range(2) for t in range(200) for r in range(2)]
        + [s.image(e, i) for e in range(3) for i in range(50)]
        + [s.stats()]
    )
    assert len(set(drawn)) == len(drawn)


def test_offsets_reproduce_the_earlier_derivation_which_collided():
    old = Seeds(5, "offsets")
    assert old.order(2) == 5 * 1_000_003 + 2
    assert old.augment(2, 9) == (5 * 1_000_003 + 2) * 1_000_033 + 9 + 7_777
    assert old.dropout(0, 11, rank=1) == 5 * 1_000_003 + 1_000_033 + 7 * 11
    assert old.image(2, 9) == [5, 2, 9] and old.stats() == 5
    # Why they were replaced: step 0's dropout masks were drawn from epoch 0's order seed.
    assert old.dropout(0, 0) == old.order(0) and Seeds(5).dropout(0, 0) != Seeds(5).order(0)


def test_the_data_order_is_drawn_from_the_runs_own_stream():
    for seeds in (Seeds(4), Seeds(4, "offsets")):
        expected = torch.randperm(50, generator=torch.Generator().manual_seed(seeds.order(3)))
        assert torch.equal(D.epoch_indices(50, 3, seeds), expected)
    assert torch.equal(D.epoch_indices(50, 3, 4), D.epoch_indices(50, 3, Seeds(4)))  # an int means keyed


def test_a_config_saved_before_keyed_streams_keeps_offsets_so_it_resumes_exactly():
    saved = PRESETS["cpu"].to_dict()
    del saved["train"]["seed_streams"]  # what a config.json written before this change holds
    assert Config.from_dict(saved).train.seed_streams == "offsets"
    assert PRESETS["cpu"].train.seed_streams == "keyed"
    assert Config.from_dict(PRESETS["cpu"].to_dict()).train.seed_streams == "keyed"


def test_an_unknown_stream_is_refused():
    with pytest.raises(ValueError, match="unknown random stream"):
        derive(0, "weights")


# ---------------------------------------------------------------------------------------------
# A run's initial weights, and how far training moved them


def test_a_runs_first_layer_before_its_first_step_is_rebuilt_from_its_seed(tmp_path, idx_dir, monkeypatch):
    interrupt_at_batch(monkeypatch, 1)  # stopped before the first step: last.pt holds the untrained network
    cfg = Config(preset="test").replace(
        model="alexnet28", dataset="mnist", data_dir=str(idx_dir), epochs=1, batch_size=16, seed=7
    )
    assert T.fit(cfg, tmp_path / "run", progress=False, quiet=True).interrupted
    ckpt = R.load_checkpoint(tmp_path / "run" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 0)
    torch.testing.assert_close(initial_first_conv(ckpt["cfg"], 1, 10), ckpt["model"]["0.weight"], rtol=0, atol=0)
    assert not torch.equal(initial_first_conv(cfg.replace(seed=8), 1, 10), ckpt["model"]["0.weight"])
    rebuilt = build_model("alexnet28", 1, 10, seed=7).state_dict()  # and every other layer, from the same seed
    for k, v in ckpt["model"].items():
        torch.testing.assert_close(rebuilt[k], v, rtol=0, atol=0)


def test_rebuilding_the_initial_weights_leaves_the_callers_random_stream_as_it_was():

    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    initial_first_conv(PRESETS["cpu"].replace(model="alexnet28", seed=5), 1, 10)
    assert torch.equal(torch.rand(4), expected)  # build_model(seed=...) reseeds torch; the caller never sees it


def test_a_first_layer_fitted_to_the_data_has_no_initial_weights_to_rebuild():

    assert initial_first_conv(PRESETS["cpu"].replace(model="speednet-white"), 1, 10) is None


def test_how_far_training_moved_is_relative_to_the_initial_norm_and_defined_at_zero():
    import math

    from alexnet.seeds import moved

    w0 = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    assert moved(w0, w0) == 0.0
    assert moved(3 * w0, w0) == pytest.approx(2.0)
    step = 1e-3 * math.sqrt(w0.numel()) / float(w0.double().norm())
    assert moved(w0 + 1e-3, w0) == pytest.approx(step, rel=1e-4)  # w0 + 1e-3 is rounded to fp32
    zero = torch.zeros_like(w0)
    assert moved(zero, zero) == 0.0  # nothing to move and nothing moved
    assert moved(w0, zero) == math.inf  # started at zero: every bit of W is training's (not 0.0, not NaN)
