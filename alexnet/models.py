"""The AlexNet family, as in Dive into Deep Learning §8.1 (Krizhevsky, Sutskever & Hinton, 2012).

Every network is an ``nn.Sequential`` whose layers appear in the order the chapter lists them (the
speedrun's ``speednet`` nests a residual block; the layer summary walks the leaf modules in call
order). Models return logits only.
Select a network by name through :func:`build_model`; ``MODELS`` holds the table.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def init_xavier(module: nn.Module) -> None:
    """The chapter's ``init_cnn``: Xavier-uniform weights for every conv and linear layer.

    Biases keep PyTorch's default, as in the book.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(module, nn.modules.lazy.LazyModuleMixin):
        nn.init.xavier_uniform_(module.weight)


def alexnet(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """The chapter's streamlined AlexNet for 224×224 input (single stream, no LRN)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1),  # (B, 96, 54, 54)
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 96, 26, 26)
        nn.Conv2d(96, 256, kernel_size=5, padding=2),  # (B, 256, 26, 26)
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 12, 12)
        nn.Conv2d(256, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),  # (B, 256, 12, 12)
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 5, 5)
        nn.Flatten(),  # (B, 256, 5, 5) -> (B, 6400)
        nn.Linear(6400, 4096),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes),
    )


def alexnet_small(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """Exercise 5.1: AlexNet with half the conv channels and 1024-wide hidden layers.

    The convolutions (where the compute is) cost about a quarter and the classifier (where the
    parameters are) about a twentieth; Fashion-MNIST's 10 classes do not need 4096 hidden units.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 48, kernel_size=11, stride=4, padding=1),  # (B, 48, 54, 54)
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 48, 26, 26)
        nn.Conv2d(48, 128, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 128, 12, 12)
        nn.Conv2d(128, 192, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(192, 192, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(192, 128, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 128, 5, 5)
        nn.Flatten(),  # (B, 3200)
        nn.Linear(3200, 1024),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(1024, num_classes),
    )


def alexnet28(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """Exercise 5.2: AlexNet's design (5 conv + 3 FC, ReLU, overlapping max-pool, dropout) at 28×28.

    Upsampling 28×28 to 224×224 adds no information and costs ~60× the arithmetic. At native
    resolution the 11×11/4 stem would throw away most of the image, so the stem is a 3×3 conv
    at full resolution and the pools shrink 28 -> 14 -> 7 -> 3.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),  # (B, 32, 28, 28)
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),  # (B, 32, 14, 14)
        nn.Conv2d(32, 64, kernel_size=3, padding=1),  # (B, 64, 14, 14)
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),  # (B, 64, 7, 7)
        nn.Conv2d(64, 128, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(128, 128, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(128, 96, kernel_size=3, padding=1),  # (B, 96, 7, 7)
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 96, 3, 3)
        nn.Flatten(),  # (B, 864)
        nn.Linear(864, 512),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(512, num_classes),
    )


def lenet(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 as in the chapter before (D2L §7.6): sigmoid and average pooling, 28×28 input."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),  # (B, 6, 28, 28)
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),  # (B, 6, 14, 14)
        nn.Conv2d(6, 16, kernel_size=5),  # (B, 16, 10, 10)
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),  # (B, 16, 5, 5)
        nn.Flatten(),  # (B, 400)
        nn.Linear(400, 120),
        nn.Sigmoid(),
        nn.Linear(120, 84),
        nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )


def lenet_relu(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """Exercise 7: LeNet-5 with AlexNet's two changes to it, ReLU and dropout in the classifier."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.ReLU(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(84, num_classes),
    )


# ---------------------------------------------------------------------------------------------
# The 2012 network itself (Krizhevsky, Sutskever & Hinton, NeurIPS 2012, §3 and §5)


class GroupedLRN(nn.LocalResponseNorm):
    """Local Response Normalisation (§3.3) as the paper writes it, within each GPU's stream.

    The paper divides by ``(k + α Σ a²)^β``; PyTorch (like Caffe) divides by ``(k + α/n Σ a²)^β``,
    so α is passed as n·α. In 2012 each GPU normalised over its own kernel maps only, so with the
    two streams held as channel groups the sum must not reach across the group boundary.
    """

    def __init__(self, groups: int = 2, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__(size, alpha=size * alpha, beta=beta, k=k)
        self.groups = groups

    def forward(self, x):
        return torch.cat([super(GroupedLRN, self).forward(part) for part in x.chunk(self.groups, 1)], 1)


class PadTo(nn.Module):
    """Zero-pad a smaller input up to ``size`` (right and bottom get the odd pixel).

    The paper says 224×224 but conv1 (11×11, stride 4, no padding) only tiles 227×227:
    (224 − 11)/4 + 1 = 54.25, while (227 − 11)/4 + 1 = 55, the 55×55 maps of Figure 2. Padding a
    224 crop to 227 makes the two the same network; a 227 input passes through untouched.
    """

    def __init__(self, size: int = 227):
        super().__init__()
        self.size = size

    def forward(self, x):
        dh, dw = self.size - x.shape[-2], self.size - x.shape[-1]
        if dh <= 0 and dw <= 0:
            return x
        return F.pad(x, (max(dw, 0) // 2, max(dw, 0) - max(dw, 0) // 2, max(dh, 0) // 2, max(dh, 0) - max(dh, 0) // 2))


def alexnet2012(in_channels: int = 3, num_classes: int = 1000) -> nn.Sequential:
    """The paper's network (Figure 2): two streams as ``groups=2`` convolutions, LRN, overlapping pools.

    conv2, conv4 and conv5 see only their own GPU's half of the previous layer; conv3 and the
    fully connected layers see both halves (there the GPUs communicated).
    """
    return nn.Sequential(
        PadTo(227),  # (B, C, 224 or 227, ...) -> (B, C, 227, 227)
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4),  # (B, 96, 55, 55)
        nn.ReLU(),
        GroupedLRN(groups=2),  # LRN after conv1 and conv2 only (§3.3)
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 96, 27, 27): overlapping pooling, z=3 s=2 (§3.4)
        nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2),  # (B, 256, 27, 27)
        nn.ReLU(),
        GroupedLRN(groups=2),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 13, 13)
        nn.Conv2d(256, 384, kernel_size=3, padding=1),  # (B, 384, 13, 13): across both GPUs
        nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2),  # (B, 256, 13, 13)
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 6, 6)
        nn.Flatten(),  # (B, 256, 6, 6) -> (B, 9216)
        nn.Linear(9216, 4096),
        nn.ReLU(),
        nn.Dropout(p=0.5),  # dropout on the outputs of the first two FC layers (§4.2)
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes),
    )


def init_paper(model: nn.Module) -> None:
    """§5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers, else 0.

    The unit biases give the ReLUs positive inputs early on, which the paper says speeds up learning.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    ones = {convs[1], convs[3], convs[4], *linears[:-1]}
    for m in convs + linears:
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.constant_(m.bias, 1.0 if m in ones else 0.0)


class Blocks(nn.Sequential):
    """An ``nn.Sequential`` of named blocks whose iteration walks the layers inside them in order.

    The blocks fix the state_dict keys (``features.0.weight``); the flat walk keeps ``for layer in
    net`` (the layer summary, FLOP counting) the same as for every other network here.
    """

    def __iter__(self):
        for block in self._modules.values():
            yield from (block if isinstance(block, nn.Sequential) else [block])


def alexnet_owt(in_channels: int = 3, num_classes: int = 1000) -> Blocks:
    """ "One weird trick" AlexNet (Krizhevsky 2014): one stream, 64-192-384-256-256 channels.

    Laid out as torchvision's ``alexnet`` (``features.N``, ``avgpool``, ``classifier.N``), so its
    checkpoints load unchanged; conv1's padding 2 makes 224×224 input tile exactly.
    """
    features = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),  # (B, 64, 55, 55)
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 64, 27, 27)
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 192, 13, 13)
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 6, 6)
    )
    classifier = nn.Sequential(
        nn.Dropout(p=0.5),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )
    # Adaptive pooling makes any input of at least 63×63 give (B, 256, 6, 6), as torchvision's does.
    return Blocks(
        OrderedDict(
            features=features, avgpool=nn.AdaptiveAvgPool2d((6, 6)), flatten=nn.Flatten(), classifier=classifier
        )
    )


# ---------------------------------------------------------------------------------------------
# The two streams on two devices, as trained on two GTX 580s


def _halves(n: int) -> list[slice]:
    return [slice(0, n - n // 2), slice(n - n // 2, n)]


def _split_layer(layer: nn.Module, first: bool) -> tuple[list[nn.Module], bool]:
    """One layer of the grouped network as its two per-device halves, and whether each half reads
    both streams (the points where the GPUs communicated)."""
    if isinstance(layer, nn.Conv2d):
        out = _halves(layer.out_channels)
        grouped = layer.groups == 2
        halves = []
        for s in out:
            conv = nn.Conv2d(
                layer.in_channels // layer.groups,
                s.stop - s.start,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                groups=1,
            )
            conv.weight.data.copy_(layer.weight.data[s])
            conv.bias.data.copy_(layer.bias.data[s])
            halves.append(conv)
        return halves, not grouped and not first
    if isinstance(layer, nn.Linear):
        halves = []
        for s in _halves(layer.out_features):
            fc = nn.Linear(layer.in_features, s.stop - s.start)
            fc.weight.data.copy_(layer.weight.data[s])
            fc.bias.data.copy_(layer.bias.data[s])
            halves.append(fc)
        return halves, True
    if isinstance(layer, GroupedLRN):
        return [nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k) for _ in range(2)], False
    return [layer, copy.deepcopy(layer)], False


class TwoTowers(nn.Module):
    """``alexnet2012`` with stream k on ``devices[k]`` (``--model-parallel cuda:0,cuda:1``).

    Each device holds half of every layer's output units; activations cross between devices only
    at conv3 and the fully connected layers, as in §3.2. Computes what the grouped network does.
    """

    def __init__(self, grouped: nn.Sequential, devices: list[str | torch.device]):
        super().__init__()
        self.devices = [torch.device(d) for d in devices]
        if len(self.devices) != 2:
            raise ValueError(f"--model-parallel needs exactly two devices, got {len(self.devices)}")
        if not any(isinstance(m, nn.Conv2d) and m.groups == 2 for m in grouped.modules()):
            raise ValueError("--model-parallel splits the two streams of alexnet2012; this network has none")
        towers: list[list[nn.Module]] = [[], []]
        self.exchange: list[bool] = []
        for i, layer in enumerate(grouped):
            halves, exchange = _split_layer(layer, first=not any(isinstance(m, nn.Conv2d) for m in grouped[:i]))
            self.exchange.append(exchange)
            for k in (0, 1):
                towers[k].append(halves[k])
        self.towers = nn.ModuleList(nn.Sequential(*t).to(d) for t, d in zip(towers, self.devices))

    def forward(self, x):
        xs = [x.to(d, non_blocking=True) for d in self.devices]  # the image goes to both GPUs
        for i, exchange in enumerate(self.exchange):
            if exchange:
                xs = [torch.cat([xs[0].to(d), xs[1].to(d)], 1) for d in self.devices]
            xs = [self.towers[k][i](xs[k]) for k in (0, 1)]
        return torch.cat([xs[0], xs[1].to(self.devices[0])], 1)  # logits on the first device

    def grouped_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in the grouped network's layout (what checkpoints hold), on the CPU."""
        out = {}
        for i, (a, b) in enumerate(zip(*self.towers)):
            for name, pa in a.named_parameters():
                out[f"{i}.{name}"] = torch.cat([pa.detach().cpu(), dict(b.named_parameters())[name].detach().cpu()])
        return out


# ---------------------------------------------------------------------------------------------
# Exercise 5.2 taken further: a network designed for 28×28 and for a small CPU (docs/speedrun.md)


def conv_bn(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    """3×3 conv, then (optionally) 2×2 max-pool, batch norm and ReLU.

    Pooling straight after the conv, before batch norm and ReLU, runs those two on a quarter of
    the pixels: on a CPU they are memory-bound and cost as much as a small conv.
    """
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)]  # BN has the bias
    if pool:
        layers.append(nn.MaxPool2d(kernel_size=2))
    return nn.Sequential(*layers, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + f(x), f two conv_bn layers at constant width (He et al. 2016): a deeper path whose
    gradient has a short way back."""

    def __init__(self, channels: int):
        super().__init__()
        self.f = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.f(x)


def speednet(in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int] = (24, 48, 96)) -> nn.Sequential:
    """The speedrun network: AlexNet's conv-pool stages with batch norm and one residual block.

    The 28×28 image is pooled after the first conv, so most of the arithmetic runs at 14×14 and
    7×7 where a 2-core CPU's GEMMs are efficient; global max-pooling ends it, no dropout, no
    hidden fully connected layers (they hold parameters, not accuracy, at this size).
    """
    w1, w2, w3 = widths
    return nn.Sequential(
        conv_bn(in_channels, w1, pool=True),  # (B, 24, 28, 28) -> (B, 24, 14, 14)
        *_speednet_rest(w1, w2, w3, num_classes),
    )


def _speednet_rest(w1: int, w2: int, w3: int, num_classes: int) -> list[nn.Module]:
    """Everything after the first stage, from its 14×14 maps (shapes at 24-48-96)."""
    return [
        conv_bn(w1, w2, pool=True),  # (B, 48, 14, 14) -> (B, 48, 7, 7)
        Residual(w2),  # (B, 48, 7, 7)
        conv_bn(w2, w3, pool=True),  # (B, 96, 7, 7) -> (B, 96, 3, 3)
        nn.AdaptiveMaxPool2d(1),  # (B, 96, 1, 1)
        nn.Flatten(),  # (B, 96)
        nn.Linear(w3, num_classes),
    ]


class WhiteningConv(nn.Conv2d):
    """A frozen 3×3 conv whose filters whiten the image's 3×3 patches (airbench's first layer, Jordan
    2024): the eigenvectors of the patches' covariance, each scaled by 1/sqrt(its eigenvalue + eps),
    with both signs (so the ReLU after it loses nothing), 2·9·C filters. Set from the training images
    by ``fit`` before training; never trained, so its output can be computed once per image."""

    def __init__(self, in_channels: int = 1, eps: float = 5e-4):
        k = 3
        super().__init__(in_channels, 2 * in_channels * k * k, kernel_size=k, padding=1, bias=False)
        self.weight.requires_grad_(False)
        self.eps = eps
        self.register_buffer("fitted", torch.tensor(False))  # in the checkpoint: a resumed run keeps its filters

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """``images``: (N, C, H, W) normalised training images; their mirror images are added, so the
        filters come in mirror pairs, as the flipped training data needs."""
        k, c = self.kernel_size[0], images.shape[1]
        patches = F.unfold(images.float(), k)  # (N, c·k·k, positions): one pass, no copy of it made
        count = patches.shape[0] * patches.shape[2]
        mean = patches.sum((0, 2), dtype=torch.float64) / count
        second = torch.bmm(patches, patches.transpose(1, 2)).sum(0, dtype=torch.float64) / count
        # A mirror image's patches are the image's with each row of taps reversed: their moments
        # are the image's, permuted, so the mirrors are counted without being made (the start-up
        # is paid from a speedrun's budget).
        m = torch.arange(c * k * k).view(c, k, k).flip(-1).flatten()
        mean, second = (mean + mean[m]) / 2, (second + second[m][:, m]) / 2
        cov = second - torch.outer(mean, mean)
        eigenvalues, vectors = torch.linalg.eigh(cov)
        w = (vectors / torch.sqrt(eigenvalues + self.eps)).T.float().reshape(-1, c, k, k)
        self.weight.copy_(torch.cat([w, -w]).to(self.weight))
        self.fitted.fill_(True)


class MaxPool2x2(nn.MaxPool2d):
    """2×2 max-pooling, computed as two pairwise maxima when no gradient is needed: the same
    values, 4x faster than ``max_pool2d`` on a channels_last batch here (0.68 against 2.76 ms for
    256×18×28×28). With a gradient, ``max_pool2d``: the pairwise form's backward is slower."""

    def __init__(self):
        super().__init__(kernel_size=2)

    def forward(self, x):
        b, c, h, w = x.shape
        if (
            (x.requires_grad and torch.is_grad_enabled())
            or h % 2
            or w % 2
            or not x.is_contiguous(memory_format=torch.channels_last)
        ):
            return super().forward(x)
        rows = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w, c)  # NHWC memory, as it is laid out
        half = torch.maximum(rows[:, :, 0], rows[:, :, 1]).reshape(b, h // 2, w // 2, 2, c)
        return torch.maximum(half[:, :, :, 0], half[:, :, :, 1]).permute(0, 3, 1, 2)


class Frozen(nn.Sequential):
    """The leading layers of a network that training does not change (no trained weights, no running
    statistics): the trainer may compute their output once per training image."""


def speednet_white(
    in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int] = (48, 96), at14: int = 0
) -> nn.Sequential:
    """``speednet`` with its learned first stage replaced by a frozen one: whitening conv (18
    filters), max-pool, ReLU, with no batch norm (the whitened maps are already at unit scale).

    The first stage at 28×28 held 30 % of speednet's step for 2 % of its arithmetic; frozen, it runs
    once per training image and mirror image before training, not in every step's forward and
    backward, and the step starts at 14×14 with an input that needs no gradient
    (docs/speedrun.md: 1.45x faster a step than with batch norm after the stem, as accurate).
    ``at14`` > 0 adds a conv of that many channels at the stem's 14×14, before the first pool.
    """
    w2, w3 = widths
    white = WhiteningConv(in_channels)
    w1 = white.out_channels
    first = [conv_bn(w1, at14)] if at14 else []  # (B, 18, 14, 14) -> (B, at14, 14, 14)
    return nn.Sequential(
        Frozen(white, MaxPool2x2(), nn.ReLU()),  # (B, 18, 28, 28) -> (B, 18, 14, 14), once per image
        *first,
        *_speednet_rest(at14 or w1, w2, w3, num_classes),
    )


def speednet_white_wide(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """``speednet-white`` at 64-128 channels after the stem, as ``speednet-wide``: for the 5-minute budget."""
    return speednet_white(in_channels, num_classes, widths=(64, 128))


def speednet_white_2x(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """``speednet-white`` at twice its widths, 96-192 after the stem: the 5-minute speedrun's network
    where ``speednet-white-2x-14`` gets fewer than 16 epochs.
    Wider convs are larger GEMMs, which a CPU runs closer to its peak: on the 2-core Xeon with AMX
    (docs/speedrun.md) its step takes 2.4-2.6x speednet-white's time for 3.6x the arithmetic."""
    return speednet_white(in_channels, num_classes, widths=(96, 192))


def speednet_white_3x(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """``speednet-white`` at three times its widths, 144-288 after the stem: for the long budgets,
    where the 2x network levels off (docs/speedrun.md, row 74: 0.9469 held out at 30 epochs against
    the 2x network's 0.9443; 0.9446 on the test set at 20 minutes on the Xeon, 10 not measured); its
    step costs 1.85x the 2x network's there."""
    return speednet_white(in_channels, num_classes, widths=(144, 288))


def speednet_white_2x_14(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """``speednet-white-2x`` with one more conv, 48 channels at the stem's 14×14, before the first pool:
    the 5-minute speedrun's network. The 3x network's accuracy for 2x's widths (docs/speedrun.md, row
    76: 0.9473 held out at 30 epochs, against 0.9443 for 2x and 0.9469 for 3x), at 1.34x the 2x
    network's arithmetic and 0.63x the 3x one's."""
    return speednet_white(in_channels, num_classes, widths=(96, 192), at14=48)


def speednet_wide(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """``speednet`` at 32-64-128 channels: 1.7x the arithmetic, for the 5-minute budget."""
    return speednet(in_channels, num_classes, widths=(32, 64, 128))


def init_default(model: nn.Module) -> None:
    """PyTorch's own initialisation (Kaiming-uniform). Batch norm rescales every conv's output,
    so the chapter's Xavier would only change the last layer's scale."""


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[int, int], nn.Module]
    resolution: int  # the square input side the network is designed for
    about: str
    init: Callable[[nn.Module], None] | None = None  # applied to the whole network; None: Xavier per layer


MODELS: dict[str, ModelSpec] = {
    "alexnet": ModelSpec(alexnet, 224, "the chapter's AlexNet (5 conv + 3 FC), 224x224"),
    "alexnet-small": ModelSpec(alexnet_small, 224, "half-width AlexNet, 224x224 (exercise 5.1)"),
    "alexnet28": ModelSpec(alexnet28, 28, "AlexNet-style net for native 28x28 (exercise 5.2)"),
    "lenet": ModelSpec(lenet, 28, "LeNet-5, sigmoid + average pooling (D2L 7.6)"),
    "lenet-relu": ModelSpec(lenet_relu, 28, "LeNet-5 with ReLU and dropout (exercise 7)"),
    "alexnet2012": ModelSpec(
        alexnet2012, 227, "the 2012 paper's two-stream net: groups=2, LRN, 224/227 input", init=init_paper
    ),
    "alexnet-owt": ModelSpec(alexnet_owt, 224, "one-weird-trick single stream, torchvision checkpoint layout"),
    "speednet": ModelSpec(speednet, 28, "batch-norm conv-pool net with a residual block, 28x28", init=init_default),
    "speednet-white": ModelSpec(
        speednet_white,
        28,
        "speednet with a frozen whitening first conv, computed once per image (the speedrun)",
        init=init_default,
    ),
    "speednet-white-wide": ModelSpec(speednet_white_wide, 28, "speednet-white at 64-128 channels", init=init_default),
    "speednet-white-2x": ModelSpec(speednet_white_2x, 28, "speednet-white at 96-192 channels", init=init_default),
    "speednet-white-3x": ModelSpec(speednet_white_3x, 28, "speednet-white at 144-288 channels", init=init_default),
    "speednet-white-2x-14": ModelSpec(
        speednet_white_2x_14,
        28,
        "speednet-white-2x with a 48-channel conv at 14x14 before its first pool (the 5-minute speedrun)",
        init=init_default,
    ),
    "speednet-wide": ModelSpec(speednet_wide, 28, "speednet at 32-64-128 channels", init=init_default),
}


# Exercises 7 and 8 change one thing at a time; each variant is its base network with that one change.


def _without(net: nn.Sequential, kind: type) -> nn.Sequential:
    return nn.Sequential(*(m for m in net if not isinstance(m, kind)))


def _swap(net: nn.Sequential, old: type, new: Callable[[], nn.Module]) -> nn.Sequential:
    return nn.Sequential(*(new() if isinstance(m, old) else m for m in net))


def init_pytorch_default(model: nn.Module) -> None:
    """Leave PyTorch's own initialisation (Kaiming-uniform with a=sqrt(5)): what a d2l 1.0 model got
    when its ``init_cnn`` was never applied."""


MODELS.update(
    {
        "lenet-relu-nodrop": ModelSpec(
            lambda c, k: _without(lenet_relu(c, k), nn.Dropout),
            28,
            "LeNet-5 with ReLU, no dropout (exercise 7, one change at a time)",
        ),
        "alexnet28-nodrop": ModelSpec(
            lambda c, k: _without(alexnet28(c, k), nn.Dropout),
            28,
            "alexnet28 without dropout (exercise 8: overfitting)",
        ),
        "alexnet28-sigmoid": ModelSpec(
            lambda c, k: _swap(alexnet28(c, k), nn.ReLU, nn.Sigmoid),
            28,
            "alexnet28 with sigmoid instead of ReLU (exercise 8: breaking training)",
        ),
        "alexnet28-torchinit": ModelSpec(
            alexnet28,
            28,
            "alexnet28 with PyTorch's default init, not Xavier (exercise 8: d2l 1.0's init bug)",
            init=init_pytorch_default,
        ),
    }
)


class UnknownModel(ValueError):
    pass


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UnknownModel(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, in_channels: int = 1, num_classes: int = 10, seed: int | None = None):
    """Build a registered network, Xavier-initialised as the chapter does (alexnet2012: as the paper)."""
    spec = get_spec(name)
    if seed is not None:
        torch.manual_seed(seed)
    net = spec.build(in_channels, num_classes)
    if spec.init is not None:
        spec.init(net)
    else:
        net.apply(init_xavier)
    return net
