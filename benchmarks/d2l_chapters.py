"""The book's CNN chapters through ``alexnet.d2l`` and through the d2l package, side by side.

For each chapter (§7.6 LeNet ... §8.8 RegNet) the chapter's network, learning rate, batch size
(128) and resize are built twice from the same code: once on ``from alexnet import d2l`` (fp32, and
again with ``d2l.fast_mode()``), once on ``from d2l import torch as d2l`` (d2l 1.0.3). Each trains
for one epoch of the same subset with the chapter's training cell (``apply_init`` where the
chapter calls it, then ``Trainer(max_epochs=1, num_gpus=1).fit``). Reported per chapter:

* images/s: training images / wall time of ``fit`` (which includes validating on --val images,
  d2l's board, and for d2l its DataLoader workers starting), through the package's harness
  (alexnet.measure.time_turns): one warm-up fit of each (the lazy layers' shaping, first calls),
  then --rounds fits of each in alternating turns on the same model and data, the median fit, so
  ratios compare;
* init correct: whether every conv and linear layer of a freshly built model, after the chapter's
  own initialisation steps, lies within Xavier's bound and reaches it (PyTorch's default does not);
* for the chapters where d2l's init does not take effect, accuracy after the same steps on the
  same data with the facade's working init and with d2l 1.0's ``init_cnn`` (a no-op on lazy layers).

d2l imports torchvision, which has no build for this CPU torch; a stub with the two transforms and
the dataset class d2l uses (same Pillow calls as torchvision's) stands in for it.

    python benchmarks/d2l_chapters.py --train 384 --val 128 --json docs/figures/d2l-chapters.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from alexnet import d2l as ours
from alexnet import data as D
from alexnet.device import cpu_has_native_bf16
from alexnet.measure import machine as this_machine
from alexnet.measure import time_turns
from alexnet.tables import Column, markdown, present

# ---------------------------------------------------------------------------------------------
# torchvision stand-in: what d2l.FashionMNIST calls, done as torchvision does it


def _torchvision_stub() -> types.ModuleType:
    class Compose:
        def __init__(self, steps):
            self.steps = steps

        def __call__(self, x):
            for step in self.steps:
                x = step(x)
            return x

    class Resize:
        def __init__(self, size):
            self.size = size

        def __call__(self, img):
            if isinstance(self.size, int):  # torchvision: the shorter side becomes size
                w, h = img.size
                short = min(w, h)
                size = (self.size * h // short, self.size * w // short)
            else:
                size = tuple(self.size)
            return img.resize((size[1], size[0]), Image.BILINEAR)

    class ToTensor:
        def __call__(self, img):
            x = torch.from_numpy(np.array(img, np.uint8, copy=True))
            return x.view(img.size[1], img.size[0], -1).permute(2, 0, 1).contiguous().float().div(255)

    class FashionMNIST(torch.utils.data.Dataset):
        def __init__(self, root, train=True, transform=None, download=False):
            split = D.read_idx_split(D.find_idx_dir("fashion-mnist", None), "train" if train else "test", None)
            self.data, self.targets, self.transform = split.images[:, 0], split.labels, transform

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            img = Image.fromarray(self.data[i].numpy(), mode="L")
            return (self.transform(img) if self.transform else img), int(self.targets[i])

    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.datasets = types.ModuleType("torchvision.datasets")
    tv.transforms.Compose, tv.transforms.Resize, tv.transforms.ToTensor = Compose, Resize, ToTensor
    tv.datasets.FashionMNIST = FashionMNIST
    return tv


def import_d2l_package():
    tv = _torchvision_stub()
    sys.modules.update(
        {"torchvision": tv, "torchvision.transforms": tv.transforms, "torchvision.datasets": tv.datasets}
    )
    from d2l import torch as theirs

    return theirs


# ---------------------------------------------------------------------------------------------
# The chapters' networks, built against whichever d2l is passed in


def chapters(d2l):
    """name -> (build model, resize, learning rate, whether the chapter calls apply_init)."""

    def lenet():
        return nn.Sequential(
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
            nn.LazyLinear(10),
        )

    def alexnet():
        return nn.Sequential(
            nn.LazyConv2d(96, kernel_size=11, stride=4, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
            nn.LazyConv2d(256, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
            nn.LazyConv2d(384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.LazyConv2d(384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.LazyConv2d(256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
            nn.Flatten(),
            nn.LazyLinear(4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.LazyLinear(4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.LazyLinear(10),
        )

    def vgg(arch=((1, 16), (1, 32), (2, 64), (2, 128), (2, 128))):
        blocks = []
        for convs, channels in arch:
            for _ in range(convs):
                blocks += [nn.LazyConv2d(channels, kernel_size=3, padding=1), nn.ReLU()]
            blocks.append(nn.MaxPool2d(2, stride=2))
        return nn.Sequential(
            *blocks,
            nn.Flatten(),
            nn.LazyLinear(4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.LazyLinear(4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.LazyLinear(10),
        )

    def nin():
        def block(c, k, s, p):
            return nn.Sequential(
                nn.LazyConv2d(c, k, s, p), nn.ReLU(), nn.LazyConv2d(c, 1), nn.ReLU(), nn.LazyConv2d(c, 1), nn.ReLU()
            )

        return nn.Sequential(
            block(96, 11, 4, 0),
            nn.MaxPool2d(3, stride=2),
            block(256, 5, 1, 2),
            nn.MaxPool2d(3, stride=2),
            block(384, 3, 1, 1),
            nn.MaxPool2d(3, stride=2),
            nn.Dropout(0.5),
            block(10, 3, 1, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    class Inception(nn.Module):
        def __init__(self, c1, c2, c3, c4):
            super().__init__()
            self.p1 = nn.LazyConv2d(c1, 1)
            self.p2 = nn.Sequential(nn.LazyConv2d(c2[0], 1), nn.ReLU(), nn.LazyConv2d(c2[1], 3, padding=1))
            self.p3 = nn.Sequential(nn.LazyConv2d(c3[0], 1), nn.ReLU(), nn.LazyConv2d(c3[1], 5, padding=2))
            self.p4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.LazyConv2d(c4, 1))

        def forward(self, x):
            return torch.cat([F.relu(p(x)) for p in (self.p1, self.p2, self.p3, self.p4)], dim=1)

    def googlenet():
        pool = lambda: nn.MaxPool2d(3, stride=2, padding=1)  # noqa: E731
        return nn.Sequential(
            nn.Sequential(nn.LazyConv2d(64, 7, stride=2, padding=3), nn.ReLU(), pool()),
            nn.Sequential(nn.LazyConv2d(64, 1), nn.ReLU(), nn.LazyConv2d(192, 3, padding=1), nn.ReLU(), pool()),
            nn.Sequential(Inception(64, (96, 128), (16, 32), 32), Inception(128, (128, 192), (32, 96), 64), pool()),
            nn.Sequential(
                Inception(192, (96, 208), (16, 48), 64),
                Inception(160, (112, 224), (24, 64), 64),
                Inception(128, (128, 256), (24, 64), 64),
                Inception(112, (144, 288), (32, 64), 64),
                Inception(256, (160, 320), (32, 128), 128),
                pool(),
            ),
            nn.Sequential(
                Inception(256, (160, 320), (32, 128), 128),
                Inception(384, (192, 384), (48, 128), 128),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            ),
            nn.LazyLinear(10),
        )

    def bn_lenet():
        return nn.Sequential(
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
            nn.LazyLinear(10),
        )

    def stem(channels, k, s, p, pool):
        layers = [nn.LazyConv2d(channels, k, stride=s, padding=p), nn.LazyBatchNorm2d(), nn.ReLU()]
        return nn.Sequential(*layers, *([nn.MaxPool2d(3, stride=2, padding=1)] if pool else []))

    def resnet18():
        arch = ((2, 64), (2, 128), (2, 256), (2, 512))
        net = nn.Sequential(stem(64, 7, 2, 3, True))
        for i, (n, c) in enumerate(arch):
            net.add_module(
                f"b{i + 2}",
                nn.Sequential(
                    *(
                        d2l.Residual(c, use_1x1conv=True, strides=2) if j == 0 and i > 0 else d2l.Residual(c)
                        for j in range(n)
                    )
                ),
            )
        net.add_module("last", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(10)))
        return net

    class DenseBlock(nn.Module):
        def __init__(self, convs, growth):
            super().__init__()
            self.net = nn.Sequential(
                *(
                    nn.Sequential(nn.LazyBatchNorm2d(), nn.ReLU(), nn.LazyConv2d(growth, 3, padding=1))
                    for _ in range(convs)
                )
            )

        def forward(self, X):
            for blk in self.net:
                X = torch.cat((X, blk(X)), dim=1)
            return X

    def densenet(channels=64, growth=32, arch=(4, 4, 4, 4)):
        net = nn.Sequential(stem(64, 7, 2, 3, True))
        for i, convs in enumerate(arch):
            net.add_module(f"dense_blk{i + 1}", DenseBlock(convs, growth))
            channels += convs * growth
            if i != len(arch) - 1:
                channels //= 2
                net.add_module(
                    f"tran_blk{i + 1}",
                    nn.Sequential(
                        nn.LazyBatchNorm2d(), nn.ReLU(), nn.LazyConv2d(channels, 1), nn.AvgPool2d(2, stride=2)
                    ),
                )
        net.add_module(
            "last",
            nn.Sequential(nn.LazyBatchNorm2d(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(10)),
        )
        return net

    def regnetx32():
        net = nn.Sequential(stem(32, 3, 2, 1, False))
        for i, (depth, c) in enumerate(((4, 32), (6, 80))):
            net.add_module(
                f"stage{i + 1}",
                nn.Sequential(
                    *(
                        d2l.ResNeXtBlock(c, 16, 1, use_1x1conv=True, strides=2)
                        if j == 0
                        else d2l.ResNeXtBlock(c, 16, 1)
                        for j in range(depth)
                    )
                ),
            )
        net.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(10)))
        return net

    class Chapter(d2l.Classifier):
        def __init__(self, make, lr, init_in_constructor):
            super().__init__()
            self.save_hyperparameters()
            self.net = make()
            if init_in_constructor:
                self.net.apply(d2l.init_cnn)

    def model(make, apply_init_only=False):
        # LeNet and BNLeNet call no init in __init__; the others all write net.apply(d2l.init_cnn)
        return lambda lr: Chapter(make, lr, init_in_constructor=not apply_init_only)

    return {
        "lenet": (model(lenet, True), 28, 0.1, True),
        "alexnet": (model(alexnet), 224, 0.01, False),
        "vgg": (model(vgg), 224, 0.01, True),
        "nin": (model(nin), 224, 0.05, True),
        "googlenet": (model(googlenet), 96, 0.01, True),
        "batchnorm": (model(bn_lenet, True), 28, 0.1, True),
        "resnet": (model(resnet18), 96, 0.01, True),
        "densenet": (model(densenet), 96, 0.01, False),
        "regnet": (model(regnetx32), 96, 0.05, False),
    }


# ---------------------------------------------------------------------------------------------
# Measurements


def d2l10_init_cnn(module):
    """d2l 1.0's init_cnn, which matches the exact types and so skips layers that are still lazy."""
    if type(module) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)


def xavier_everywhere(model) -> bool:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
            bound = math.sqrt(6 / (fan_in + fan_out))
            top = m.weight.detach().abs().max().item()
            if top > bound * (1 + 1e-6) or (m.weight.numel() >= 200 and top < 0.95 * bound):
                return False
    return True


def subset(data, n_train, n_val):
    data.train = torch.utils.data.Subset(data.train, range(n_train))
    data.val = torch.utils.data.Subset(data.val, range(n_val))
    return data


def chapter_setup(d2l, name, n_train, n_val):
    """The chapter's training cell up to fit: model, data, apply_init where the chapter has it."""
    make, resize, lr, apply_init = chapters(d2l)[name]
    torch.manual_seed(0)
    data = subset(d2l.FashionMNIST(batch_size=128, resize=(resize, resize)), n_train, n_val)
    model = make(lr)
    if apply_init:
        model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
    return model, data


def init_correct(d2l, name) -> bool:
    model, data = chapter_setup(d2l, name, 128, 128)
    with torch.no_grad():
        model.eval()(next(iter(data.get_dataloader(False)))[0][:2])  # shapes whatever is still lazy
    return xavier_everywhere(model)


def epochs(d2l, name, n_train, n_val, fast: bool = False):
    """run(k): k one-epoch fits of the chapter's training cell, on one model and its data (a later
    epoch costs what the first does, less the lazy shaping the warm-up takes)."""
    model, data = chapter_setup(d2l, name, n_train, n_val)
    trainer = d2l.Trainer(max_epochs=1, num_gpus=1)

    def run(k):
        ours.fast_mode(fast)  # the facade's global switch: on only during the fast candidate's turn
        try:
            for _ in range(k):
                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # d2l's 4 workers on a 2-core machine: the pipeline measured
                    trainer.fit(model, data)
        finally:
            ours.fast_mode(False)

    return run


def speeds(theirs, name, n_train, n_val, rounds) -> dict:
    """images/s of one epoch: ours fp32, ours with fast_mode(), d2l, in alternating turns."""
    timings = time_turns(
        {
            "ours_fp32": epochs(ours, name, n_train, n_val),
            "ours_fast": epochs(ours, name, n_train, n_val, fast=True),
            "d2l": epochs(theirs, name, n_train, n_val),
        },
        "cpu",
        rounds=rounds,
    )
    return {k: t.per_second(n_train) for k, t in timings.items()}


def accuracy_after(name, n_train, n_val, working_init: bool) -> float:
    """Train one epoch on the facade with the chapter's init working or, as in d2l 1.0, not."""
    saved = ours.init_cnn
    ours.init_cnn = saved if working_init else d2l10_init_cnn
    try:
        model, data = chapter_setup(ours, name, n_train, n_val)
        trainer = ours.Trainer(max_epochs=1, num_gpus=1, verbose=False)
        trainer.fit(model, data)
    finally:
        ours.init_cnn = saved
    return trainer.history[-1]["val_acc"]


COLUMNS = [
    Column("chapter", left=True),
    Column("init_ours", "init correct: ours", left=True),
    Column("init_d2l", "init correct: d2l", left=True),
    Column("ours_fp32", "images/s ours fp32", "{:.0f}"),
    Column("ours_fast", "ours fast", "{:.0f}"),
    Column("d2l", "d2l", "{:.0f}"),
    Column("acc_xavier", "acc, working init", "{:.3f}"),
    Column("acc_default", "acc, d2l 1.0 init", "{:.3f}"),
    Column("error", left=True),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chapters", default="lenet,alexnet,vgg,nin,googlenet,batchnorm,resnet,densenet,regnet")
    p.add_argument("--train", type=int, default=384, help="training images per epoch (3 batches of 128)")
    p.add_argument("--val", type=int, default=128, help="validation images")
    p.add_argument("--acc-chapters", default="", help="chapters to train with and without the working init")
    p.add_argument("--acc-train", type=int, default=2048)
    p.add_argument("--acc-val", type=int, default=1000)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="timed fits of each (after one warm-up fit each)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    theirs = import_d2l_package()
    # d2l's 4 workers on a 2-core machine warn at every loader; that pipeline is what is measured
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")
    os.environ.setdefault("ALEXNET_D2L_BOARD_DIR", tempfile.mkdtemp(prefix="d2l-boards-"))  # not the checkout
    machine = this_machine("cpu").line()
    print(f"# {machine}; bf16 instructions: {cpu_has_native_bf16()}; train {args.train}, val {args.val}", flush=True)
    rows = []
    for name in filter(None, args.chapters.split(",")):
        row = {"chapter": name}
        try:
            row |= {"init_ours": init_correct(ours, name), "init_d2l": init_correct(theirs, name)}
            if not args.skip_speed:
                row |= speeds(theirs, name, args.train, args.val, args.rounds)
        except Exception as e:  # one chapter's failure is a finding, not the end of the run
            row["error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    for name in filter(None, args.acc_chapters.split(",")):
        row = {
            "chapter": name,
            "acc_train": args.acc_train,
            "acc_val": args.acc_val,
            "acc_xavier": accuracy_after(name, args.acc_train, args.acc_val, True),
            "acc_default": accuracy_after(name, args.acc_train, args.acc_val, False),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(markdown(rows, present(COLUMNS, rows)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"machine": machine, "args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1)
        )
    return rows


if __name__ == "__main__":
    main()
