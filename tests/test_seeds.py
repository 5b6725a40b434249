"""Every random stream of a run, keyed by (seed, purpose, epoch, step, rank): distinct streams, and
the earlier offsets kept for old runs."""

import itertools

import pytest
import torch

from alexnet import data as D
from alexnet.config import PRESETS, Config
from alexnet.seeds import PURPOSES, Seeds, derive


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
