"""Muon: orthogonalised momentum updates for the convolutions, SGD for everything else.

Muon (Keller Jordan, 2024; the optimiser of his airbench CIFAR-10 and modded-nanogpt records)
takes a weight matrix's Nesterov-momentum update, replaces it by the nearest semi-orthogonal matrix
(the same singular vectors, every singular value ~1) and steps along that: every direction the
gradient points in moves the weight by the same amount, rather than the few largest ones dominating.
A convolution's (out, in, kh, kw) weight is the (out, in·kh·kw) matrix of its filters. Batch norm's
scales and shifts, biases and the last linear layer keep SGD (with Nesterov momentum), as in airbench.

``alexnet train --optimizer muon --muon-lr LR`` selects it (``muon_groups`` is the hook that
``train.make_optimizer`` calls); the learning-rate schedule scales both rates alike.

Lookahead (Zhang, Lucas, Hinton and Ba, 2019) wraps either optimiser: ``--lookahead-k K`` keeps a
second, slow copy of the weights and, every K steps, moves it ``--lookahead-alpha`` of the way to
the weights the optimiser has reached, which then restart from it (``add_lookahead``).
"""

from __future__ import annotations

import torch

# The quintic Newton-Schulz iteration's coefficients, from Keller Jordan's Muon: chosen to push
# singular values in (0, 1] up fast rather than to converge exactly, so after 5 steps they lie in a
# band around 1 (about 0.68-1.13) instead of at 1; that is all the update needs, at a third of the
# steps an exact iteration would take.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The semi-orthogonal matrix nearest to the 2-D ``g`` (its polar factor U Vᵀ), approximately:
    singular values in a band around 1, singular vectors those of ``g``."""
    if g.ndim != 2:
        raise ValueError(f"newton_schulz takes a matrix, not a tensor of shape {tuple(g.shape)}")
    a, b, c = _NS_COEFFS
    # float32 here: the matrices are small (48 x 432 in speednet-white), so bf16 saves nothing on
    # the CPU and would put rounding noise into every update.
    x = g.float()
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide side: X Xᵀ is then the smaller square
        x = x.T
    x = x / (x.norm() + eps)  # the Frobenius norm bounds the largest singular value: now all are <= 1
    for _ in range(steps):  # x <- a x + (b s + c s²) x with s = x xᵀ, in three matrix calls
        s = x @ x.T
        # addmm folds the scalings and sums into the products: the same arithmetic in a third of
        # the calls, which matters here, where each call costs more than its small matrix product.
        x = torch.addmm(x, torch.addmm(s, s, s, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for groups with ``muon=True`` (parameters of 2 or more dimensions), SGD for the rest.

    Both keep one momentum buffer per parameter (``state[p]["momentum_buffer"]``), so a checkpoint's
    optimiser state resumes a run exactly. Muon's weight decay is decoupled (the weight shrinks by
    ``lr * weight_decay`` a step, as in Keller Jordan's Muon), SGD's is added to the gradient, as
    ``torch.optim.SGD`` does.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0):
        if not lr > 0:
            raise ValueError(f"lr must be positive, not {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), not {momentum}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, muon=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("Muon orthogonalises matrices: a group with muon=True holds a vector")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd and not group["muon"]:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    # The first step's buffer is the gradient itself, as torch.optim.SGD starts it.
                    state["momentum_buffer"] = g.detach().clone()
                else:
                    state["momentum_buffer"].mul_(mom).add_(g)
                buf = state["momentum_buffer"]
                update = g.add(buf, alpha=mom) if group["nesterov"] else buf
                if group["muon"]:
                    rows = update.size(0)
                    # (out, in, kh, kw) -> (out, in*kh*kw): each row a filter, orthogonalised together.
                    ortho = newton_schulz(update.reshape(rows, -1))
                    # A tall matrix's orthogonal update has a smaller RMS per entry than a wide one's
                    # (sqrt(cols/rows) of it): scale it back so the rate means the same for both.
                    ortho *= max(1.0, rows / ortho.size(1)) ** 0.5
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(ortho.view_as(p).to(p.dtype), alpha=-lr)
                else:
                    p.add_(update, alpha=-lr)
        return loss


def muon_groups(groups: list[dict], lr: float, muon_lr: float) -> list[dict]:
    """``train.make_optimizer``'s parameter groups split for Muon: in each, the convolution weights
    (4-D) go to a Muon group stepping at ``muon_lr``, the rest stay SGD at ``lr``.

    The schedule sets each group's rate to ``lr_fn(step) * group["lr_scale"]``, so a Muon group
    carries ``muon_lr / lr`` (times any scale it had) and follows the same warm-up and decay."""
    sgd, muon = [], []
    for g in groups:
        convs = [p for p in g["params"] if p.ndim == 4]
        rest = [p for p in g["params"] if p.ndim != 4]
        scale = g.get("lr_scale", 1.0)
        if rest:
            sgd.append({**g, "params": rest, "lr_scale": scale})
        if convs:
            muon.append({**g, "params": convs, "muon": True, "lr": muon_lr * scale, "lr_scale": muon_lr / lr * scale})
    # SGD's groups first: the progress line and TensorBoard log param_groups[0]'s rate, --lr's.
    return sgd + muon


def add_lookahead(optimizer: torch.optim.Optimizer, k: int, alpha: float) -> torch.optim.Optimizer:
    """Lookahead around ``optimizer``, in place: every ``k`` steps the slow weights move ``alpha`` of
    the way to the fast ones (the optimiser's), and the fast weights restart from them.

    Hooks rather than a wrapping class, so the trainer keeps the optimiser it built (fused SGD or
    Muon), its ``param_groups`` and its checkpoint format: the slow weights live in the optimiser's
    own state (``state[p]["lookahead_slow"]``) and the step count in each group
    (``"lookahead_step"``), so ``state_dict`` carries both and a resumed run goes on exactly.
    The slow weights start as the weights before the first step."""
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"lookahead's k must be a positive whole number of steps, not {k!r}")
    if not 0 < alpha <= 1:
        raise ValueError(f"lookahead's alpha must be in (0, 1], not {alpha}")
    for group in optimizer.param_groups:
        group.update(lookahead_k=k, lookahead_alpha=alpha, lookahead_step=0)

    @torch.no_grad()
    def start(opt, args, kwargs):
        for group in opt.param_groups:
            for p in group["params"]:
                state = opt.state[p]
                if "lookahead_slow" not in state:
                    state["lookahead_slow"] = p.detach().clone()

    @torch.no_grad()
    def sync(opt, args, kwargs):
        for group in opt.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"]:
                continue
            for p in group["params"]:
                slow = opt.state[p]["lookahead_slow"]
                slow.lerp_(p, group["lookahead_alpha"])  # slow += alpha * (fast - slow)
                p.copy_(slow)

    optimizer.register_step_pre_hook(start)
    optimizer.register_step_post_hook(sync)
    return optimizer
