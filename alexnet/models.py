"""The AlexNet family, as in Dive into Deep Learning §8.1 (Krizhevsky, Sutskever & Hinton, 2012).

Every network is an ``nn.Sequential`` whose layers appear in the order the chapter lists them, so
``for layer in net`` walks the chapter's layer summary. Models return logits only.
Select a network by name through :func:`build_model`; ``MODELS`` holds the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


def init_xavier(module: nn.Module) -> None:
    """The chapter's ``init_cnn``: Xavier-uniform weights for every conv and linear layer.

    Biases keep PyTorch's default, as in the book.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(
        module, nn.modules.lazy.LazyModuleMixin
    ):
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


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[int, int], nn.Module]
    resolution: int  # the square input side the network is designed for
    about: str


MODELS: dict[str, ModelSpec] = {
    "alexnet": ModelSpec(alexnet, 224, "the chapter's AlexNet (5 conv + 3 FC), 224x224"),
    "alexnet-small": ModelSpec(alexnet_small, 224, "half-width AlexNet, 224x224 (exercise 5.1)"),
    "alexnet28": ModelSpec(alexnet28, 28, "AlexNet-style net for native 28x28 (exercise 5.2)"),
    "lenet": ModelSpec(lenet, 28, "LeNet-5, sigmoid + average pooling (D2L 7.6)"),
    "lenet-relu": ModelSpec(lenet_relu, 28, "LeNet-5 with ReLU and dropout (exercise 7)"),
}


class UnknownModel(ValueError):
    pass


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UnknownModel(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, in_channels: int = 1, num_classes: int = 10, seed: int | None = None):
    """Build a registered network, Xavier-initialised as the chapter does."""
    spec = get_spec(name)
    if seed is not None:
        torch.manual_seed(seed)
    net = spec.build(in_channels, num_classes)
    net.apply(init_xavier)
    return net
