"""Each CNN chapter of D2L (§7.6, §8.1-§8.8), written against ``alexnet.d2l`` the way the chapter
writes against d2l: its class style (``save_hyperparameters``, methods attached with
``add_to_class``, lazy layers initialised by ``net.apply(init_cnn)`` or ``apply_init``), its data
calls and a ``Trainer.fit``. The networks are the chapters' designs at reduced width, trained for
one epoch on a few hundred images, so that the nine together take seconds on a CPU.

Each test checks what the chapter relies on: every conv and linear layer Xavier-initialised
(batch norm untouched), the shapes, and a training loss that falls.
"""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from alexnet import d2l

pytestmark = pytest.mark.usefixtures("fashion_dir")


@pytest.fixture(autouse=True)
def _quiet_board(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_D2L_BOARD_DIR", str(tmp_path))
    torch.manual_seed(0)


def assert_xavier(model: nn.Module) -> None:
    """Every conv / linear weight lies within Xavier's bound sqrt(6 / (fan_in + fan_out)) and
    (where there are enough weights for the extreme to be near it) reaches it. PyTorch's default
    bound is 1 / sqrt(fan_in), which differs from Xavier's unless fan_out is close to 5 fan_in,
    so a layer left at the default fails one side or the other."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers
    for m in layers:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
        bound = math.sqrt(6 / (fan_in + fan_out))
        top = m.weight.detach().abs().max().item()
        assert top <= bound * (1 + 1e-6), f"{m}: max |w| {top:.4f} above Xavier's {bound:.4f}"
        if m.weight.numel() >= 200:  # P(max < 0.95 bound) = 0.95^200 < 4e-5
            assert top >= 0.95 * bound, f"{m}: max |w| {top:.4f} well below Xavier's {bound:.4f}"


def assert_batch_norm_untouched(model: nn.Module) -> None:
    """Before training, batch norm's scale is 1 and its shift 0: init_cnn has left it alone."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns
    for m in bns:
        assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))


def small(data, n_train=384, n_val=128):
    data.train = torch.utils.data.Subset(data.train, range(n_train))
    data.val = torch.utils.data.Subset(data.val, range(n_val))
    return data


def fit_one_epoch(model, data):
    trainer = d2l.Trainer(max_epochs=1, num_gpus=1, verbose=False)
    trainer.fit(model, data)
    first, last = (p.y for p in model.board.data["train_loss"])  # the two half-epoch means
    assert math.isfinite(last) and last < first, f"train loss did not fall: {first:.4f} -> {last:.4f}"
    row = trainer.history[-1]
    assert 0 <= row["val_acc"] <= 1 and math.isfinite(row["val_loss"])
    return trainer


def fit_one_batch(model, data, epochs=20):
    """For the deep networks without batch norm (AlexNet, VGG, NiN): from Xavier's small initial
    logits they sit near ln 10 = 2.303 for hundreds of steps (the book's own curves show it), so a
    few dozen fresh batches do not show learning. Fitting one batch again and again does."""
    data.train = torch.utils.data.Subset(data.train, range(data.batch_size))
    trainer = d2l.Trainer(max_epochs=epochs, num_gpus=1, verbose=False)
    trainer.fit(model, data)
    first, last = trainer.history[0]["train_loss"], trainer.history[-1]["train_loss"]
    assert math.isfinite(last) and last < first - 0.02, f"train loss did not fall: {first:.4f} -> {last:.4f}"
    return trainer


# ---------------------------------------------------------------------------------------------
# §7.6 LeNet: its own init_cnn, layer_summary attached to d2l.Classifier, apply_init


def test_lenet_chapter(monkeypatch, capsys):
    def init_cnn(module):  # the chapter defines its own, on materialised layers
        if type(module) in (nn.Linear, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)

    class LeNet(d2l.Classifier):
        def __init__(self, lr=0.1, num_classes=10):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(
                nn.LazyConv2d(6, kernel_size=5, padding=2),
                nn.Sigmoid(),
                nn.AvgPool2d(2, stride=2),
                nn.LazyConv2d(16, kernel_size=5),
                nn.Sigmoid(),
                nn.AvgPool2d(2, stride=2),
                nn.Flatten(),
                nn.LazyLinear(120),
                nn.Sigmoid(),
                nn.LazyLinear(84),
                nn.Sigmoid(),
                nn.LazyLinear(num_classes),
            )

    monkeypatch.setattr(d2l.Classifier, "layer_summary", d2l.Classifier.layer_summary)  # restored afterwards

    @d2l.add_to_class(d2l.Classifier)
    def layer_summary(self, X_shape):
        X = d2l.randn(*X_shape)
        for layer in self.net:
            X = layer(X)
            print(type(layer).__name__, tuple(X.shape))

    LeNet().layer_summary((1, 1, 28, 28))
    lines = capsys.readouterr().out.splitlines()
    assert lines[5] == "AvgPool2d (1, 16, 5, 5)" and lines[-1] == "Linear (1, 10)"

    data = small(d2l.FashionMNIST(batch_size=32))
    model = LeNet(lr=0.5)
    assert model.hparams == {"lr": 0.5, "num_classes": 10}
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], init_cnn)
    assert_xavier(model)
    fit_one_epoch(model, data)


# ---------------------------------------------------------------------------------------------
# §8.1 AlexNet: net.apply(d2l.init_cnn) in __init__ on lazy layers, no apply_init


class AlexNet(d2l.Classifier):
    def __init__(self, lr=0.1, num_classes=10, width=1):
        super().__init__()
        self.save_hyperparameters()
        c = [96 // width, 256 // width, 384 // width, 4096 // width]
        self.net = nn.Sequential(
            nn.LazyConv2d(c[0], kernel_size=11, stride=4, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
            nn.LazyConv2d(c[1], kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
            nn.LazyConv2d(c[2], kernel_size=3, padding=1),
            nn.ReLU(),
            nn.LazyConv2d(c[2], kernel_size=3, padding=1),
            nn.ReLU(),
            nn.LazyConv2d(c[1], kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
            nn.Flatten(),
            nn.LazyLinear(c[3]),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.LazyLinear(c[3]),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.LazyLinear(num_classes),
        )
        self.net.apply(d2l.init_cnn)


def test_alexnet_chapter(capsys):
    AlexNet().layer_summary((1, 1, 224, 224))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Conv2d output shape:\t torch.Size([1, 96, 54, 54])"
    assert lines[13] == "Flatten output shape:\t torch.Size([1, 6400])"

    # 65x65 is the smallest input that survives AlexNet's three 3/2 max-pools (the chapter: 224)
    data = small(d2l.FashionMNIST(batch_size=32, resize=65))
    X, y = next(iter(data.train_dataloader()))
    assert X.shape == (32, 1, 65, 65) and X.dtype == torch.float32 and y.dtype == torch.int64
    fresh = AlexNet(width=4)
    fresh(X)
    assert_xavier(fresh)
    fit_one_batch(AlexNet(lr=0.3, width=4), data)


# ---------------------------------------------------------------------------------------------
# §8.2 VGG: blocks from a helper, apply_init with d2l.init_cnn


def vgg_block(num_convs, out_channels):
    layers = []
    for _ in range(num_convs):
        layers += [nn.LazyConv2d(out_channels, kernel_size=3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(kernel_size=2, stride=2))


class VGG(d2l.Classifier):
    def __init__(self, arch, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            *(vgg_block(*a) for a in arch),
            nn.Flatten(),
            nn.LazyLinear(256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.LazyLinear(256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.LazyLinear(num_classes),
        )
        self.net.apply(d2l.init_cnn)


def test_vgg_chapter():
    arch = ((1, 8), (1, 16), (2, 32), (2, 32), (2, 32))
    model = VGG(arch=arch, lr=0.3)
    assert model.arch == arch
    data = small(d2l.FashionMNIST(batch_size=32, resize=(32, 32)))
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
    assert_xavier(model)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    fit_one_batch(model, data)


# ---------------------------------------------------------------------------------------------
# §8.3 NiN: 1x1 convolutions, global average pooling in place of dense layers


def nin_block(out_channels, kernel_size, strides, padding):
    return nn.Sequential(
        nn.LazyConv2d(out_channels, kernel_size, strides, padding),
        nn.ReLU(),
        nn.LazyConv2d(out_channels, kernel_size=1),
        nn.ReLU(),
        nn.LazyConv2d(out_channels, kernel_size=1),
        nn.ReLU(),
    )


class NiN(d2l.Classifier):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nin_block(24, kernel_size=11, strides=4, padding=0),
            nn.MaxPool2d(3, stride=2),
            nin_block(64, kernel_size=5, strides=1, padding=2),
            nn.MaxPool2d(3, stride=2),
            nin_block(96, kernel_size=3, strides=1, padding=1),
            nn.MaxPool2d(3, stride=2),
            nn.Dropout(0.5),
            nin_block(num_classes, kernel_size=3, strides=1, padding=1),
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
        )
        self.net.apply(d2l.init_cnn)


def test_nin_chapter():
    model = NiN(lr=0.5)
    data = small(d2l.FashionMNIST(batch_size=32, resize=96))
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
    assert_xavier(model)
    assert model(torch.zeros(2, 1, 96, 96)).shape == (2, 10)
    fit_one_batch(model, data)


# ---------------------------------------------------------------------------------------------
# §8.4 GoogLeNet: an nn.Module block, the Classifier spread over cells with add_to_class


class Inception(nn.Module):
    def __init__(self, c1, c2, c3, c4):
        super().__init__()
        self.p1 = nn.LazyConv2d(c1, kernel_size=1)
        self.p2a, self.p2b = nn.LazyConv2d(c2[0], kernel_size=1), nn.LazyConv2d(c2[1], kernel_size=3, padding=1)
        self.p3a, self.p3b = nn.LazyConv2d(c3[0], kernel_size=1), nn.LazyConv2d(c3[1], kernel_size=5, padding=2)
        self.p4a, self.p4b = nn.MaxPool2d(3, stride=1, padding=1), nn.LazyConv2d(c4, kernel_size=1)

    def forward(self, x):
        paths = (self.p1(x), self.p2b(F.relu(self.p2a(x))), self.p3b(F.relu(self.p3a(x))), self.p4b(self.p4a(x)))
        return torch.cat([F.relu(p) for p in paths], dim=1)


class GoogleNet(d2l.Classifier):
    def b1(self):
        return nn.Sequential(
            nn.LazyConv2d(16, kernel_size=7, stride=2, padding=3),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )


@d2l.add_to_class(GoogleNet)
def b2(self):
    return nn.Sequential(
        nn.LazyConv2d(16, kernel_size=1),
        nn.ReLU(),
        nn.LazyConv2d(48, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


@d2l.add_to_class(GoogleNet)
def b3(self):
    return nn.Sequential(
        Inception(16, (24, 32), (4, 8), 8),
        Inception(32, (32, 48), (8, 24), 16),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


@d2l.add_to_class(GoogleNet)
def __init__(self, lr=0.1, num_classes=10):
    super(GoogleNet, self).__init__()
    self.save_hyperparameters()
    self.net = nn.Sequential(
        self.b1(), self.b2(), self.b3(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)
    )
    self.net.apply(d2l.init_cnn)


def test_googlenet_chapter():
    model = GoogleNet(lr=0.1)
    assert (model.lr, model.num_classes) == (0.1, 10)
    data = small(d2l.FashionMNIST(batch_size=32, resize=(48, 48)))
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
    assert_xavier(model)
    assert model.net[2](torch.zeros(1, 48, 12, 12)).shape == (1, 120, 6, 6)  # 32 + 48 + 24 + 16 channels
    fit_one_epoch(model, data)


# ---------------------------------------------------------------------------------------------
# §8.5 batch norm: a hand-written layer with moving statistics, then nn.LazyBatchNorm


class BatchNormScratch(nn.Module):
    """Batch norm by hand; in prediction mode (no autograd) it uses the moving statistics."""

    def __init__(self, num_features, num_dims):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma, self.beta = nn.Parameter(torch.ones(shape)), nn.Parameter(torch.zeros(shape))
        self.moving_mean, self.moving_var = torch.zeros(shape), torch.ones(shape)

    def forward(self, X):
        self.moving_mean, self.moving_var = self.moving_mean.to(X.device), self.moving_var.to(X.device)
        if not torch.is_grad_enabled():
            X_hat = (X - self.moving_mean) / torch.sqrt(self.moving_var + 1e-5)
        else:
            dims = (0,) if X.dim() == 2 else (0, 2, 3)
            mean = X.mean(dim=dims, keepdim=True)
            var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)
            X_hat = (X - mean) / torch.sqrt(var + 1e-5)
            self.moving_mean = (0.9 * self.moving_mean + 0.1 * mean).detach()
            self.moving_var = (0.9 * self.moving_var + 0.1 * var).detach()
        return self.gamma * X_hat + self.beta


class BNLeNetScratch(d2l.Classifier):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(6, kernel_size=5),
            BatchNormScratch(6, 4),
            nn.Sigmoid(),
            nn.AvgPool2d(2, stride=2),
            nn.LazyConv2d(16, kernel_size=5),
            BatchNormScratch(16, 4),
            nn.Sigmoid(),
            nn.AvgPool2d(2, stride=2),
            nn.Flatten(),
            nn.LazyLinear(120),
            BatchNormScratch(120, 2),
            nn.Sigmoid(),
            nn.LazyLinear(84),
            BatchNormScratch(84, 2),
            nn.Sigmoid(),
            nn.LazyLinear(num_classes),
        )


class BNLeNet(d2l.Classifier):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(6, kernel_size=5),
            nn.LazyBatchNorm2d(),
            nn.Sigmoid(),
            nn.AvgPool2d(2, stride=2),
            nn.LazyConv2d(16, kernel_size=5),
            nn.LazyBatchNorm2d(),
            nn.Sigmoid(),
            nn.AvgPool2d(2, stride=2),
            nn.Flatten(),
            nn.LazyLinear(120),
            nn.LazyBatchNorm1d(),
            nn.Sigmoid(),
            nn.LazyLinear(84),
            nn.LazyBatchNorm1d(),
            nn.Sigmoid(),
            nn.LazyLinear(num_classes),
        )


@pytest.mark.parametrize("Net", [BNLeNetScratch, BNLeNet])
def test_batch_norm_chapter(Net):
    data = small(d2l.FashionMNIST(batch_size=32))
    model = Net(lr=0.5)
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
    assert_xavier(model)
    if Net is BNLeNet:
        assert_batch_norm_untouched(model)
    fit_one_epoch(model, data)
    gamma = model.net[1].gamma if Net is BNLeNetScratch else model.net[1].weight
    assert gamma.reshape(-1).shape == (6,) and not torch.equal(gamma, torch.ones_like(gamma))  # it learned


# ---------------------------------------------------------------------------------------------
# §8.6 ResNet and ResNeXt: lazy batch norm inside blocks, the chapter's d2l.randn probes


# §8.6 saves its Residual block into d2l (#@save); alexnet.d2l holds the same block.
Residual = d2l.Residual


class ResNet(d2l.Classifier):
    def b1(self):
        return nn.Sequential(
            nn.LazyConv2d(16, kernel_size=7, stride=2, padding=3),
            nn.LazyBatchNorm2d(),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )


@d2l.add_to_class(ResNet)
def block(self, num_residuals, num_channels, first_block=False):
    return nn.Sequential(
        *(
            Residual(num_channels, use_1x1conv=True, strides=2)
            if i == 0 and not first_block
            else Residual(num_channels)
            for i in range(num_residuals)
        )
    )


@d2l.add_to_class(ResNet)
def __init__(self, arch, lr=0.1, num_classes=10):  # noqa: F811
    super(ResNet, self).__init__()
    self.save_hyperparameters()
    self.net = nn.Sequential(self.b1())
    for i, b in enumerate(arch):
        self.net.add_module(f"b{i + 2}", self.block(*b, first_block=(i == 0)))
    self.net.add_module("last", nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)))
    self.net.apply(d2l.init_cnn)  # before the fix: lazy batch norm made the first forward raise


def test_resnet_chapter():
    X = d2l.randn(4, 3, 6, 6)
    assert Residual(3)(X).shape == (4, 3, 6, 6)
    assert Residual(6, use_1x1conv=True, strides=2)(X).shape == (4, 6, 3, 3)
    assert d2l.ResNeXtBlock(32, 16, 1)(d2l.randn(4, 32, 12, 12)).shape == (4, 32, 12, 12)
    assert d2l.Residual(8, use_1x1conv=True, strides=2)(X).shape == (4, 8, 3, 3)

    model = ResNet(((1, 16), (1, 32)), lr=0.05)
    data = small(d2l.FashionMNIST(batch_size=32, resize=(32, 32)))
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
    assert_xavier(model)
    assert_batch_norm_untouched(model)
    fit_one_epoch(model, data)


# ---------------------------------------------------------------------------------------------
# §8.7 DenseNet: only net.apply(d2l.init_cnn) in __init__; d2l 1.0 leaves it at the default init


def conv_block(num_channels):
    return nn.Sequential(nn.LazyBatchNorm2d(), nn.ReLU(), nn.LazyConv2d(num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    def __init__(self, num_convs, num_channels):
        super().__init__()
        self.net = nn.Sequential(*(conv_block(num_channels) for _ in range(num_convs)))

    def forward(self, X):
        for blk in self.net:
            X = torch.cat((X, blk(X)), dim=1)  # each block sees every earlier block's output
        return X


def transition_block(num_channels):
    return nn.Sequential(
        nn.LazyBatchNorm2d(),
        nn.ReLU(),
        nn.LazyConv2d(num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


class DenseNet(d2l.Classifier):
    def b1(self):
        return nn.Sequential(
            nn.LazyConv2d(16, kernel_size=7, stride=2, padding=3),
            nn.LazyBatchNorm2d(),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )


@d2l.add_to_class(DenseNet)
def __init__(self, num_channels=16, growth_rate=8, arch=(2, 2), lr=0.1, num_classes=10):  # noqa: F811
    super(DenseNet, self).__init__()
    self.save_hyperparameters()
    self.net = nn.Sequential(self.b1())
    for i, num_convs in enumerate(arch):
        self.net.add_module(f"dense_blk{i + 1}", DenseBlock(num_convs, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(arch) - 1:
            num_channels //= 2
            self.net.add_module(f"tran_blk{i + 1}", transition_block(num_channels))
    self.net.add_module(
        "last",
        nn.Sequential(
            nn.LazyBatchNorm2d(), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)
        ),
    )
    self.net.apply(d2l.init_cnn)


def test_densenet_chapter():
    assert DenseBlock(2, 10)(torch.randn(4, 3, 8, 8)).shape == (4, 23, 8, 8)
    assert transition_block(10)(torch.randn(4, 23, 8, 8)).shape == (4, 10, 4, 4)
    fresh = DenseNet()
    fresh(torch.zeros(2, 1, 32, 32))
    assert_xavier(fresh)
    assert_batch_norm_untouched(fresh)
    data = small(d2l.FashionMNIST(batch_size=32, resize=(32, 32)))
    trainer = fit_one_epoch(DenseNet(lr=0.1), data)
    assert trainer.train_batch_idx == 12 and trainer.val_batch_idx == 4


# ---------------------------------------------------------------------------------------------
# §8.8 AnyNet / RegNet: stages of d2l.ResNeXtBlock, hyperparameters through a subclass


class AnyNet(d2l.Classifier):
    def stem(self, num_channels):
        return nn.Sequential(
            nn.LazyConv2d(num_channels, kernel_size=3, stride=2, padding=1), nn.LazyBatchNorm2d(), nn.ReLU()
        )


@d2l.add_to_class(AnyNet)
def stage(self, depth, num_channels, groups, bot_mul):
    return nn.Sequential(
        *(
            d2l.ResNeXtBlock(num_channels, groups, bot_mul, use_1x1conv=True, strides=2)
            if i == 0
            else d2l.ResNeXtBlock(num_channels, groups, bot_mul)
            for i in range(depth)
        )
    )


@d2l.add_to_class(AnyNet)
def __init__(self, arch, stem_channels, lr=0.1, num_classes=10):  # noqa: F811
    super(AnyNet, self).__init__()
    self.save_hyperparameters()
    self.net = nn.Sequential(self.stem(stem_channels))
    for i, s in enumerate(arch):
        self.net.add_module(f"stage{i + 1}", self.stage(*s))
    self.net.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)))
    self.net.apply(d2l.init_cnn)


class RegNetX(AnyNet):
    def __init__(self, lr=0.1, num_classes=10):
        groups, bot_mul = 8, 1
        super().__init__(((1, 16, groups, bot_mul), (2, 32, groups, bot_mul)), 16, lr, num_classes)


def test_regnet_chapter(capsys):
    RegNetX().layer_summary((1, 1, 32, 32))
    assert capsys.readouterr().out.splitlines()[-1] == "Sequential output shape:\t torch.Size([1, 10])"
    model = RegNetX(lr=0.05)
    assert model.stem_channels == 16 and model.arch[1][1] == 32  # saved from AnyNet's __init__
    fresh = RegNetX()
    fresh(torch.zeros(2, 1, 32, 32))
    assert_xavier(fresh)
    assert_batch_norm_untouched(fresh)
    fit_one_epoch(model, small(d2l.FashionMNIST(batch_size=32, resize=(32, 32))))
