"""Muon (alexnet/optim.py): orthogonal updates for the convolutions, SGD for the rest, exact resume;
lookahead around either."""

import io

import pytest
import torch
from conftest import alexnet, interrupt_at_batch, one_error_line, tiny_cfg
from torch import nn

from alexnet import train as T
from alexnet.config import PRESETS, Config, ConfigError
from alexnet.models import build_model
from alexnet.optim import Muon, add_lookahead, newton_schulz

# Five steps of the quintic iteration leave the singular values of a well-conditioned matrix in a
# band around 1 (about 0.68-1.05 for these), not at 1: the iteration trades exactness for speed.
BAND = (0.6, 1.2)


def _svals(m: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(m.double())


# speednet-white's convolutions as matrices of filters (out, in*3*3), one tall, and its linear layer's
# shape; a random square matrix is left out: its smallest singular value is near 0, and five steps
# do not lift it into the band (nor does Muon need them to).
@pytest.mark.parametrize("shape", [(48, 162), (48, 432), (96, 432), (432, 48), (10, 96)])
def test_newton_schulz_puts_every_singular_value_near_one_and_keeps_the_singular_vectors(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 37.0  # any scale
    x = newton_schulz(g)
    assert x.shape == g.shape
    s = _svals(x)
    assert BAND[0] < s.min() and s.max() < BAND[1], (s.min(), s.max())
    # The exact answer is U Vᵀ of g's SVD: the iteration only bends the singular values.
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    polar = u @ vh
    cos = (x.double() * polar).sum() / (x.double().norm() * polar.norm())
    assert cos > 0.98, cos
    off = u.T @ x.double() @ vh.T  # diagonal when the singular vectors are g's
    assert (off - torch.diag(torch.diagonal(off))).abs().max() < 0.02


def test_newton_schulz_refuses_a_tensor_that_is_not_a_matrix():
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.randn(4, 3, 3, 3))


def _conv_and_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(18, 48, 3, bias=False), nn.BatchNorm2d(48)
    for p in (*conv.parameters(), *bn.parameters()):
        p.grad = torch.randn_like(p)
    return conv, bn


def test_a_conv_weights_update_has_its_shape_and_is_orthogonal_as_a_matrix_of_filters():
    conv, bn = _conv_and_bn()
    before = conv.weight.detach().clone()
    opt = Muon([{"params": [conv.weight], "muon": True}, {"params": list(bn.parameters())}], lr=0.1, momentum=0.9)
    opt.step()
    step = (before - conv.weight.detach()) / 0.1
    assert step.shape == conv.weight.shape == (48, 18, 3, 3)
    s = _svals(step.reshape(48, -1))
    assert BAND[0] < s.min() and s.max() < BAND[1], (s.min(), s.max())


def test_muon_refuses_a_vector_in_a_muon_group():
    with pytest.raises(ValueError, match="vector"):
        Muon([{"params": [nn.Parameter(torch.ones(3))], "muon": True}], lr=0.1)


def test_only_the_convolution_weights_go_to_muon_and_follow_the_schedule_at_muon_lr():
    cfg = PRESETS["speedrun"].replace(optimizer="muon", muon_lr=0.08, lr=0.2)
    model = build_model("speednet-white")
    opt = T.make_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(opt, Muon)
    convs = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad}
    assert len(convs) == 4  # 18->48, the two residual 48->48, 48->96; the frozen whitening conv trains not
    muon = [p for g in opt.param_groups if g["muon"] for p in g["params"]]
    sgd = [p for g in opt.param_groups if not g["muon"] for p in g["params"]]
    assert {id(p) for p in muon} == convs
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in sgd} == trained - convs and len(sgd) + len(muon) == len(trained)
    assert not opt.param_groups[0]["muon"]  # the progress line's rate is --lr's
    for g in opt.param_groups:  # the trainer sets each group's rate to lr_fn(step) * lr_scale
        assert g["lr_scale"] * 0.2 == pytest.approx(0.08 if g["muon"] else 0.2)
        assert g["weight_decay"] == (5e-4 if g["muon"] or any(p.ndim > 1 for p in g["params"]) else 0.0)


def test_the_sgd_groups_step_as_torch_sgd_with_nesterov_momentum_and_weight_decay():
    torch.manual_seed(0)
    a, b = nn.Linear(6, 4), nn.Linear(6, 4)
    b.load_state_dict(a.state_dict())
    ours = Muon([{"params": [a.weight], "weight_decay": 1e-2}, {"params": [a.bias]}], lr=0.1, momentum=0.9)
    ref = torch.optim.SGD(
        [{"params": [b.weight], "weight_decay": 1e-2}, {"params": [b.bias]}], lr=0.1, momentum=0.9, nesterov=True
    )
    for _ in range(4):
        for m in (a, b):
            m.zero_grad()
        x = torch.randn(8, 6)
        a(x).square().sum().backward()
        b(x).square().sum().backward()
        ours.step()
        ref.step()
        torch.testing.assert_close(a.weight, b.weight)
        torch.testing.assert_close(a.bias, b.bias)


def test_muon_state_round_trips_through_state_dict_and_steps_on_exactly():
    def groups(conv, bn):
        return [{"params": [conv.weight], "muon": True}, {"params": list(bn.parameters())}]

    def copy_of(conv, bn):
        c, n = _conv_and_bn()
        c.load_state_dict(conv.state_dict())
        n.load_state_dict(bn.state_dict())
        return c, n

    conv, bn = _conv_and_bn()
    opt = Muon(groups(conv, bn), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt.step()
    (conv2, bn2), (conv3, bn3) = copy_of(conv, bn), copy_of(conv, bn)
    resumed = Muon(groups(conv2, bn2), lr=0.1, momentum=0.9, weight_decay=1e-3)
    saved = io.BytesIO()  # through bytes, as a checkpoint: load_state_dict alone would share the buffers
    torch.save(opt.state_dict(), saved)
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    fresh = Muon(groups(conv3, bn3), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for o in (opt, resumed, fresh):
        o.step()
    for a, b in ((conv.weight, conv2.weight), (bn.weight, bn2.weight), (bn.bias, bn2.bias)):
        assert torch.equal(a, b)
    # The momentum buffers are what carried over: a fresh optimiser's second step differs.
    assert not torch.equal(conv.weight, conv3.weight) and not torch.equal(bn.weight, bn3.weight)


def _muon_run(data_dir, **kw) -> Config:
    # lenet-relu: two convolutions (Muon) and three linear layers (SGD)
    muon = dict(model="lenet-relu", nesterov=True, weight_decay=5e-4, optimizer="muon", muon_lr=0.02)
    return tiny_cfg(data_dir, **{**muon, **kw})


def _same_run(a, b, optimizer="muon"):
    for ma, mb in zip(a.metrics, b.metrics, strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert ma[key] == pytest.approx(mb[key], rel=1e-5, abs=1e-6), key
    wa = torch.load(a.run_dir / "last.pt", weights_only=True)
    wb = torch.load(b.run_dir / "last.pt", weights_only=True)
    for k in wa["model"]:
        torch.testing.assert_close(wa["model"][k], wb["model"][k])
    assert wb["config"]["train"]["optimizer"] == optimizer


def test_a_resumed_muon_run_equals_an_uninterrupted_one(idx_dir, tmp_path):
    cfg = _muon_run(idx_dir, warmup_epochs=0.5)
    straight = T.fit(cfg, tmp_path / "a", progress=False, quiet=True)
    T.fit(cfg.replace(epochs=1), tmp_path / "b", progress=False, quiet=True)
    _same_run(straight, T.fit(cfg, tmp_path / "b", resume=True, overrides={"epochs": 2}, progress=False, quiet=True))


def test_a_muon_run_interrupted_mid_epoch_resumes_to_the_same_result(idx_dir, tmp_path, monkeypatch):
    cfg = _muon_run(idx_dir, schedule="linear", warmup_epochs=0.5)
    straight = T.fit(cfg, tmp_path / "a", progress=False, quiet=True)
    restore = interrupt_at_batch(monkeypatch, 7)  # the second training batch of epoch 2
    assert T.fit(cfg, tmp_path / "b", progress=False, quiet=True).interrupted
    restore()
    _same_run(straight, T.fit(cfg, tmp_path / "b", resume=True, progress=False, quiet=True))


def test_muon_lr_without_the_muon_optimizer_is_refused():
    with pytest.raises(ConfigError, match="--optimizer muon"):
        PRESETS["speedrun"].replace(muon_lr=0.3)
    with pytest.raises(ConfigError, match="--muon-lr must be positive"):
        PRESETS["speedrun"].replace(optimizer="muon", muon_lr=0.0)
    with pytest.raises(ConfigError, match="--optimizer 'adam' is not one of"):
        PRESETS["speedrun"].replace(optimizer="adam")


def test_the_command_line_names_a_muon_lr_given_without_muon_in_one_line(tmp_path):
    line = one_error_line(alexnet("train", "--preset", "speedrun", "--muon-lr", "0.3", cwd=tmp_path))
    assert "--muon-lr" in line and "--optimizer muon" in line


def _fixed_gradient_steps(opt, params, n, seed=1):
    """n steps on gradients drawn from a fixed stream: the same n gradients for every optimiser."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def test_lookahead_moves_the_slow_weights_alpha_of_the_way_every_k_steps():
    torch.manual_seed(0)
    w, ref = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.empty(4, 3))
    with torch.no_grad():
        ref.copy_(w)
    k, alpha = 5, 0.3
    opt = add_lookahead(torch.optim.SGD([w], lr=0.1, momentum=0.9), k, alpha)
    plain = torch.optim.SGD([ref], lr=0.1, momentum=0.9)  # the fast weights, stepped without lookahead
    gen_w, gen_r = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    slow = w.detach().clone()  # the slow weights start as the weights before the first step
    for step in range(1, 3 * k + 1):
        w.grad, ref.grad = torch.randn(4, 3, generator=gen_w), torch.randn(4, 3, generator=gen_r)
        opt.step()
        plain.step()
        if step % k:  # between syncs the optimiser steps alone
            torch.testing.assert_close(w, ref, rtol=0, atol=1e-6)
        else:  # every k steps: slow + alpha (fast - slow), and the fast weights restart there
            slow = slow + alpha * (ref.detach() - slow)
            torch.testing.assert_close(w.detach(), slow, rtol=0, atol=1e-6)
            assert not torch.allclose(w, ref)
            with torch.no_grad():
                ref.copy_(w)
    # SGD's momentum carries across a sync, as the paper keeps the inner optimiser's state.
    assert torch.equal(opt.state[w]["momentum_buffer"], plain.state[ref]["momentum_buffer"])


def test_lookahead_state_round_trips_through_state_dict_mid_cycle_and_steps_on_exactly():
    def build(conv, bn):
        groups = [{"params": [conv.weight], "muon": True}, {"params": list(bn.parameters())}]
        return add_lookahead(Muon(groups, lr=0.1, momentum=0.9, weight_decay=1e-3), 4, 0.5)

    conv, bn = _conv_and_bn()
    params = lambda c, n: [c.weight, *n.parameters()]  # noqa: E731
    opt = build(conv, bn)
    _fixed_gradient_steps(opt, params(conv, bn), 3)  # mid-cycle: the slow weights lag the fast ones
    assert not torch.equal(opt.state[conv.weight]["lookahead_slow"], conv.weight)
    copies = []
    for _ in range(2):
        c, n = _conv_and_bn()
        c.load_state_dict(conv.state_dict())
        n.load_state_dict(bn.state_dict())
        copies.append((c, n))
    (conv2, bn2), (conv3, bn3) = copies
    resumed, fresh = build(conv2, bn2), build(conv3, bn3)
    saved = io.BytesIO()  # through bytes, as a checkpoint: load_state_dict alone would share the tensors
    torch.save(opt.state_dict(), saved)
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    for o, (c, n) in ((opt, (conv, bn)), (resumed, (conv2, bn2)), (fresh, (conv3, bn3))):
        _fixed_gradient_steps(o, params(c, n), 6, seed=2)  # across the sync at step 4 and on
    for a, b in zip(params(conv, bn), params(conv2, bn2), strict=True):
        assert torch.equal(a, b)
    # The slow weights and the step count are what carried over: a fresh lookahead lands elsewhere.
    assert not torch.equal(conv.weight, conv3.weight)


def test_lookahead_refuses_a_k_or_alpha_that_means_nothing():
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="k must be"):
        add_lookahead(torch.optim.SGD([w], lr=0.1), 0, 0.5)
    with pytest.raises(ValueError, match="alpha must be"):
        add_lookahead(torch.optim.SGD([w], lr=0.1), 5, 1.5)


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_a_lookahead_run_interrupted_mid_cycle_resumes_to_the_same_result(idx_dir, tmp_path, monkeypatch, optimizer):
    muon_lr = 0.02 if optimizer == "muon" else PRESETS["speedrun"].train.muon_lr  # sgd: the default, unused
    cfg = _muon_run(idx_dir, schedule="linear", warmup_epochs=0.5, optimizer=optimizer, muon_lr=muon_lr, lookahead_k=4)
    straight = T.fit(cfg, tmp_path / "a", progress=False, quiet=True)
    restore = interrupt_at_batch(monkeypatch, 7)  # the second training batch of epoch 2: 6 steps, mid-cycle
    assert T.fit(cfg, tmp_path / "b", progress=False, quiet=True).interrupted
    restore()
    resumed = T.fit(cfg, tmp_path / "b", resume=True, progress=False, quiet=True)
    _same_run(straight, resumed, optimizer)
    # Lookahead changed the run: without it the same recipe ends elsewhere.
    other = T.fit(cfg.replace(lookahead_k=0), tmp_path / "c", progress=False, quiet=True)
    assert other.metrics[-1]["train_loss"] != pytest.approx(straight.metrics[-1]["train_loss"], rel=1e-6)


def test_lookahead_alpha_without_lookahead_k_is_refused():
    with pytest.raises(ConfigError, match="--lookahead-k"):
        PRESETS["speedrun"].replace(lookahead_alpha=0.8)
    with pytest.raises(ConfigError, match="--lookahead-alpha must be in"):
        PRESETS["speedrun"].replace(lookahead_k=5, lookahead_alpha=0.0)
    with pytest.raises(ConfigError, match="--lookahead-k must not be negative"):
        PRESETS["speedrun"].replace(lookahead_k=-1)
