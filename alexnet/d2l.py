"""``from alexnet import d2l``: the d2l 1.0 API that the book's CNN chapters use, on this project's pipeline.

Replace ``from d2l import torch as d2l`` with ``from alexnet import d2l`` and the PyTorch code of
§7.6 (LeNet) and §8.1-§8.8 (AlexNet, VGG, NiN, GoogLeNet, batch norm, ResNet/ResNeXt, DenseNet,
AnyNet/RegNet) runs as written, in a script or in Jupyter. Three things differ on purpose:

* ``init_cnn`` works on lazy layers. d2l 1.0 tests ``type(module) == nn.Conv2d``, which is false
  for a ``LazyConv2d`` that has not seen an input yet, so where a chapter only writes
  ``self.net.apply(d2l.init_cnn)`` in ``__init__`` (AlexNet, DenseNet, AnyNet/RegNet) the network
  silently trains from PyTorch's default initialisation. Here a lazy conv or linear layer is
  Xavier-initialised the moment it takes shape; batch norm and other layers are left alone.
* ``FashionMNIST`` keeps the images as uint8 and makes each batch by one gather and one batched
  resize (no PIL per image, no worker processes). ``data.train`` / ``data.val`` are still
  datasets (``len``, ``[i]``, ``Subset``); anything that is not ours goes through a DataLoader.
* The board draws in the cell in Jupyter, as d2l's does; in a script nothing pops up: the
  trainer prints one line per epoch and saves the board as ``d2l-board-<Model>.png`` in the
  working directory (or in ``$ALEXNET_D2L_BOARD_DIR``).

Numerics are the chapter's, fp32. ``d2l.fast_mode()`` (or ``ALEXNET_D2L_FAST=1`` in the
environment) turns on channels_last and, where the device multiplies bf16 natively, bf16 autocast.
"""

from __future__ import annotations

import collections
import inspect
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from . import data as D
from .device import bf16_autocast

nn_Module = nn.Module


# ---------------------------------------------------------------------------------------------
# Speed switch


@dataclass
class Speed:
    """What ``fast_mode`` turns on. Both off by default: the chapter's numbers, in fp32."""

    bf16: bool = False  # bf16 autocast where the device multiplies bf16 natively (weights stay fp32)
    channels_last: bool = False  # NHWC activations: what oneDNN and cuDNN convolutions prefer


speed = Speed(*(2 * [os.environ.get("ALEXNET_D2L_FAST", "") not in ("", "0")]))


def fast_mode(enabled: bool = True) -> None:
    """Trade the chapter's exact fp32 numerics for speed: channels_last, and bf16 where it pays."""
    speed.bf16 = speed.channels_last = enabled


# ---------------------------------------------------------------------------------------------
# Tensor aliases (the book writes d2l.reshape(x, shape) so one text serves four frameworks)

ones_like, ones, zeros_like, zeros = torch.ones_like, torch.ones, torch.zeros_like, torch.zeros
tensor, arange, meshgrid, linspace, eye = torch.tensor, torch.arange, torch.meshgrid, torch.linspace, torch.eye
sin, sinh, cos, cosh, tanh, exp, log, abs = (
    torch.sin,
    torch.sinh,
    torch.cos,
    torch.cosh,
    torch.tanh,
    torch.exp,
    torch.log,
    torch.abs,
)
normal, rand, randn, matmul, batch_matmul = torch.normal, torch.rand, torch.randn, torch.matmul, torch.bmm
concat, stack, sigmoid = torch.cat, torch.stack, torch.sigmoid
int32, int64, float32 = torch.int32, torch.int64, torch.float32


def numpy(x, *args, **kwargs):
    return x.detach().cpu().numpy(*args, **kwargs)


def _tensor_method(name: str, method: str):
    """``d2l.name(x, ...)`` calls ``x.method(...)``: the book's framework-neutral spelling."""

    def call(x, *args, **kwargs):
        return getattr(x, method)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


size = _tensor_method("size", "numel")
reshape = _tensor_method("reshape", "reshape")
to = _tensor_method("to", "to")
reduce_sum = _tensor_method("reduce_sum", "sum")
reduce_mean = _tensor_method("reduce_mean", "mean")
argmax = _tensor_method("argmax", "argmax")
astype = _tensor_method("astype", "type")
transpose = _tensor_method("transpose", "t")
expand_dims = _tensor_method("expand_dims", "unsqueeze")
swapaxes = _tensor_method("swapaxes", "swapaxes")
repeat = _tensor_method("repeat", "repeat")


def __getattr__(name):
    # d2l.plt without importing pyplot (and picking a GUI backend) for every script that imports us.
    if name == "plt":
        import matplotlib.pyplot as plt

        return plt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# Devices


def cpu() -> torch.device:
    return torch.device("cpu")


def gpu(i: int = 0) -> torch.device:
    return torch.device(f"cuda:{i}")


def num_gpus() -> int:
    return torch.cuda.device_count()


def try_gpu(i: int = 0) -> torch.device:
    """GPU ``i`` if there is one, else the CPU."""
    return gpu(i) if num_gpus() > i else cpu()


def try_all_gpus() -> list[torch.device]:
    """Every GPU; the CPU alone where there is none."""
    return [gpu(i) for i in range(num_gpus())] or [cpu()]


# ---------------------------------------------------------------------------------------------
# Utilities


def add_to_class(Class):
    """Decorator: attach the decorated function to ``Class`` as a method (the book's way of
    spreading one class over several cells)."""

    def attach(fn):
        setattr(Class, fn.__name__, fn)
        return fn

    return attach


class HyperParameters:
    def save_hyperparameters(self, ignore=()):
        """Every argument of the calling ``__init__`` becomes an attribute, and ``self.hparams``."""
        caller = inspect.currentframe().f_back
        skip = set(ignore) | {"self"}
        self.hparams = {k: v for k, v in caller.f_locals.items() if k not in skip and not k.startswith("_")}
        for k, v in self.hparams.items():
            setattr(self, k, v)


class Timer:
    """Wall-clock intervals: start(), stop() -> seconds; avg(), sum(), cumsum() over the stops."""

    def __init__(self):
        self.times: list[float] = []
        self.start()

    def start(self) -> None:
        self.tik = time.time()

    def stop(self) -> float:
        self.times.append(time.time() - self.tik)
        return self.times[-1]

    def avg(self) -> float:
        return sum(self.times) / len(self.times)

    def sum(self) -> float:
        return sum(self.times)

    def cumsum(self) -> list[float]:
        return np.cumsum(self.times).tolist()


class Accumulator:
    """n running sums: add(a, b, ...) adds elementwise; acc[i] reads one."""

    def __init__(self, n: int):
        self.data = [0.0] * n

    def add(self, *args) -> None:
        self.data = [total + float(x) for total, x in zip(self.data, args)]

    def reset(self) -> None:
        self.data = [0.0] * len(self.data)

    def __getitem__(self, i):
        return self.data[i]


# ---------------------------------------------------------------------------------------------
# Plots


def _in_jupyter() -> bool:
    ipython = sys.modules.get("IPython")  # never imported: certainly not a kernel
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def use_svg_display() -> None:
    if _in_jupyter():
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("svg")


def set_figsize(figsize=(3.5, 2.5)) -> None:
    use_svg_display()
    __getattr__("plt").rcParams["figure.figsize"] = figsize


def set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend) -> None:
    axes.set_xlabel(xlabel), axes.set_ylabel(ylabel)
    axes.set_xscale(xscale), axes.set_yscale(yscale)
    axes.set_xlim(xlim), axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid()


def plot(
    X,
    Y=None,
    xlabel=None,
    ylabel=None,
    legend=(),
    xlim=None,
    ylim=None,
    xscale="linear",
    yscale="linear",
    fmts=("-", "m--", "g-.", "r:"),
    figsize=(3.5, 2.5),
    axes=None,
):
    """One or several curves on one axes: plot(y), plot(x, y), plot(x, [y1, y2]), plot([x1, x2], [y1, y2])."""

    def one_curve(v):
        return (hasattr(v, "ndim") and v.ndim == 1) or (isinstance(v, list) and not hasattr(v[0], "__len__"))

    if one_curve(X):
        X = [X]
    if Y is None:
        X, Y = [[]] * len(X), X
    elif one_curve(Y):
        Y = [Y]
    if len(X) != len(Y):
        X = X * len(Y)
    set_figsize(figsize)
    axes = axes if axes is not None else __getattr__("plt").gca()
    axes.cla()
    for x, y, fmt in zip(X, Y, fmts):
        axes.plot(x, y, fmt) if len(x) else axes.plot(y, fmt)
    set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, list(legend))


def show_images(imgs, num_rows, num_cols, titles=None, scale=1.5):
    """A grid of images (tensors or arrays), with a title above each if given."""
    plt = __getattr__("plt")
    _, axes = plt.subplots(num_rows, num_cols, figsize=(num_cols * scale, num_rows * scale))
    axes = np.atleast_1d(axes).flatten()
    for i, (ax, img) in enumerate(zip(axes, imgs)):
        ax.imshow(numpy(img) if torch.is_tensor(img) else img)
        ax.axes.get_xaxis().set_visible(False)
        ax.axes.get_yaxis().set_visible(False)
        if titles:
            ax.set_title(titles[i])
    return axes


class ProgressBoard(HyperParameters):
    """Curves that grow while a model trains: draw(x, y, label, every_n) adds the mean of every
    ``every_n`` points. In Jupyter the figure in the cell is redrawn in place; elsewhere nothing
    is shown and ``save(path)`` writes it."""

    def __init__(
        self,
        xlabel=None,
        ylabel=None,
        xlim=None,
        ylim=None,
        xscale="linear",
        yscale="linear",
        ls=("-", "--", "-.", ":"),
        colors=("C0", "C1", "C2", "C3"),
        fig=None,
        axes=None,
        figsize=(3.5, 2.5),
        display=True,
    ):
        self.save_hyperparameters()
        self.raw_points: dict[str, list] = collections.OrderedDict()
        self.data: dict[str, list] = collections.OrderedDict()
        self._handle = None  # the Jupyter output this board redraws

    def draw(self, x, y, label, every_n=1):
        Point = collections.namedtuple("Point", ["x", "y"])
        points = self.raw_points.setdefault(label, [])
        line = self.data.setdefault(label, [])
        # y may be a tensor on the device: it is only brought to the host, once, when a group of
        # every_n points is complete, not at every step.
        points.append(Point(x, y.detach() if torch.is_tensor(y) else y))
        if len(points) < every_n:
            return
        line.append(Point(sum(p.x for p in points) / len(points), float(sum(p.y for p in points) / len(points))))
        points.clear()
        if self.display and _in_jupyter():
            self.show()

    def render(self):
        """The board as a matplotlib Figure. Not pyplot's: no window, and no second copy that the
        inline backend would show at the end of the cell."""
        from matplotlib.figure import Figure

        if self.fig is None:
            self.fig = Figure(figsize=self.figsize)
        axes = self.axes if self.axes is not None else (self.fig.axes[0] if self.fig.axes else self.fig.add_subplot())
        axes.cla()
        for (label, line), ls, color in zip(self.data.items(), self.ls, self.colors):
            axes.plot([p.x for p in line], [p.y for p in line], linestyle=ls, color=color, label=label)
        if self.xlim:
            axes.set_xlim(self.xlim)
        if self.ylim:
            axes.set_ylim(self.ylim)
        axes.set_xlabel(self.xlabel), axes.set_ylabel(self.ylabel)
        axes.set_xscale(self.xscale), axes.set_yscale(self.yscale)
        if self.data:
            axes.legend()
        self.fig.tight_layout()
        return self.fig

    def show(self):
        """Draw (first call) or redraw (later calls) the board in the Jupyter cell's output."""
        from IPython.display import SVG, display

        buf = io.StringIO()
        self.render().savefig(buf, format="svg")
        if self._handle is None:
            self._handle = display(SVG(buf.getvalue()), display_id=True)
        else:
            self._handle.update(SVG(buf.getvalue()))

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.render().savefig(path, dpi=120)
        return path


# ---------------------------------------------------------------------------------------------
# Initialisation

_XAVIER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # their Lazy* forms are subclasses


class _XavierWhenShaped:
    """Forward pre-hook on a lazy layer: Xavier-initialise its weight once the layer's own hook
    has given it a shape (hooks run in the order registered, and the lazy layer registered its
    own in its constructor), then remove itself. An object rather than a closure over a handle,
    so that a copy.deepcopy or pickle of the model carries a hook that removes itself from the
    copy; a closure would remove the original's hook and fire on every forward of the copy."""

    def __call__(self, module, args):
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            return  # (the class becomes plain Conv2d / Linear once shaped)
        nn.init.xavier_uniform_(module.weight)
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is self:
                del module._forward_pre_hooks[key]


def init_cnn(module: nn.Module) -> None:
    """Xavier-uniform weights for conv and linear layers; on a lazy one at its first forward."""
    if not isinstance(module, _XAVIER_TYPES):
        return
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        if not any(isinstance(h, _XavierWhenShaped) for h in module._forward_pre_hooks.values()):
            module.register_forward_pre_hook(_XavierWhenShaped())
    else:
        nn.init.xavier_uniform_(module.weight)


# ---------------------------------------------------------------------------------------------
# Models


class Module(nn.Module, HyperParameters):
    """A network with its loss, its training and validation steps and its optimiser."""

    def __init__(self, plot_train_per_epoch=2, plot_valid_per_epoch=1):
        super().__init__()
        self.save_hyperparameters()
        self.board = ProgressBoard()

    def loss(self, y_hat, y):
        raise NotImplementedError

    def forward(self, X):
        assert hasattr(self, "net"), "the model has no self.net; define it or override forward"
        return self.net(X)

    def plot(self, key, value, train):
        """Log one value: a point on the board (train: plot_train_per_epoch points per epoch, each
        the mean of its steps; validation: plot_valid_per_epoch) and the trainer's epoch line."""
        assert hasattr(self, "trainer"), "plot() is called during Trainer.fit"
        trainer = self.trainer
        self.board.xlabel = "epoch"
        if train:
            x = trainer.train_batch_idx / trainer.num_train_batches
            n = trainer.num_train_batches / self.plot_train_per_epoch
        else:
            x = trainer.epoch + 1
            n = trainer.num_val_batches / self.plot_valid_per_epoch
        label = ("train_" if train else "val_") + key
        value = value.detach() if torch.is_tensor(value) else value
        if hasattr(trainer, "log"):
            trainer.log(label, value)
        # d2l's int(n) is 0 when an epoch has fewer batches than points: no curve at all.
        self.board.draw(x, value, label, every_n=max(1, int(n)))

    def training_step(self, batch):
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.plot("loss", loss, train=True)
        return loss

    def validation_step(self, batch):
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.plot("loss", loss, train=False)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def apply_init(self, inputs, init=None):
        """One forward pass gives the lazy layers their shapes; then ``init`` on every layer."""
        self.forward(*inputs)
        if init is not None:
            self.net.apply(init)


class Classifier(Module):
    """Cross-entropy loss, and accuracy logged next to it on the validation set."""

    def validation_step(self, batch):
        y_hat = self(*batch[:-1])
        self.plot("loss", self.loss(y_hat, batch[-1]), train=False)
        self.plot("acc", self.accuracy(y_hat, batch[-1]), train=False)

    def accuracy(self, Y_hat, Y, averaged=True):
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1]))
        correct = (Y_hat.argmax(dim=1).type(Y.dtype) == Y.reshape(-1)).type(torch.float32)
        return correct.mean() if averaged else correct

    def loss(self, Y_hat, Y, averaged=True):
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1]))
        # .float(): under bf16 autocast the logits are bf16; the loss is taken in fp32.
        return F.cross_entropy(Y_hat.float(), Y.reshape((-1,)), reduction="mean" if averaged else "none")

    def layer_summary(self, X_shape):
        X = randn(*X_shape)
        for layer in self.net:
            X = layer(X)
            print(layer.__class__.__name__, "output shape:\t", X.shape)


class LeNet(Classifier):
    """LeNet-5 (§7.6): two sigmoid conv + average-pool stages, then three dense layers."""

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(6, kernel_size=5, padding=2),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.LazyConv2d(16, kernel_size=5),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(),  # (B, 16, 5, 5) -> (B, 400) for 28x28 inputs
            nn.LazyLinear(120),
            nn.Sigmoid(),
            nn.LazyLinear(84),
            nn.Sigmoid(),
            nn.LazyLinear(num_classes),
        )


class Residual(nn.Module):
    """The ResNet block (§8.6): two 3x3 conv + batch norm, added to the input (through a strided
    1x1 conv where the shape changes)."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn1, self.bn2 = nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d()

    def forward(self, X):
        Y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(X)))))
        shortcut = self.conv3(X) if self.conv3 is not None else X
        return F.relu(Y + shortcut)


class ResNeXtBlock(nn.Module):
    """The ResNeXt block (§8.6): 1x1 down to ``num_channels * bot_mul``, a grouped 3x3 with
    ``groups`` channels per group, 1x1 back up, batch norm after each, plus the shortcut."""

    def __init__(self, num_channels, groups, bot_mul, use_1x1conv=False, strides=1):
        super().__init__()
        bottleneck = int(round(num_channels * bot_mul))
        self.conv1 = nn.LazyConv2d(bottleneck, kernel_size=1)
        self.conv2 = nn.LazyConv2d(bottleneck, kernel_size=3, stride=strides, padding=1, groups=bottleneck // groups)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1)
        self.bn1, self.bn2, self.bn3 = nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d()
        if use_1x1conv:
            self.conv4, self.bn4 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides), nn.LazyBatchNorm2d()
        else:
            self.conv4 = None

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        shortcut = self.bn4(self.conv4(X)) if self.conv4 is not None else X
        return F.relu(Y + shortcut)


# ---------------------------------------------------------------------------------------------
# Data


class DataModule(HyperParameters):
    """Where the batches come from: get_dataloader(train) -> an iterable of (X, y) batches."""

    def __init__(self, root="../data", num_workers=4):
        self.save_hyperparameters()

    def get_dataloader(self, train):
        raise NotImplementedError

    def train_dataloader(self):
        return self.get_dataloader(train=True)

    def val_dataloader(self):
        return self.get_dataloader(train=False)

    def get_tensorloader(self, tensors, train, indices=slice(0, None)):
        dataset = torch.utils.data.TensorDataset(*(t[indices] for t in tensors))
        return torch.utils.data.DataLoader(dataset, self.batch_size, shuffle=train)


def _count(where: str, name: str, value, least: int) -> None:
    """A whole number of at least ``least``, or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{where}({name}={value!r}): {name} must be a whole number of at least {least}")


def _as_size(resize) -> tuple[int, int]:
    """d2l's resize argument as (height, width): an int (a 28x28 image's both sides) or (h, w)."""
    if isinstance(resize, int):
        resize = (resize, resize)
    try:
        h, w = (int(s) for s in resize)
    except (TypeError, ValueError):
        raise TypeError(f"resize={resize!r}: give an int or a (height, width) pair") from None
    if h < 1 or w < 1:
        raise ValueError(f"resize={resize!r}: sides must be positive")
    return h, w


def _float_transform(size: tuple[int, int]) -> D.Transform:
    """d2l's Resize then ToTensor, on a batch: uint8 (B, C, h, w) -> float32 (B, C, *size) in [0, 1],
    bilinear, antialiased when shrinking as PIL's resize filters over the whole footprint. Within one
    grey level of torchvision's on a PIL image (PIL rounds to uint8 after resizing; this does not)."""
    return D.Transform(size, channels_last=False, antialias=True)


class ImageDataset(torch.utils.data.Dataset):
    """A split as d2l's torchvision dataset presents it: ``len``, and ``[i]`` -> (float32 image
    (C, h, w) in [0, 1], int label). The pixels stay uint8 until an image or batch is asked for."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]):
        self.images, self.labels, self.size = images, labels, size
        self.transform = _float_transform(size)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        i = range(len(self))[i]  # negative indices, and IndexError past the end
        return self.transform(self.images[i : i + 1])[0], int(self.labels[i])


def _resolve(dataset) -> tuple[ImageDataset, torch.Tensor | None] | None:
    """(our dataset, indices into it or None for all) for our dataset or Subsets of it; else None."""
    indices = None
    while isinstance(dataset, torch.utils.data.Subset):
        outer = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        indices = outer if indices is None else outer[indices]
        dataset = dataset.dataset
    return (dataset, indices) if isinstance(dataset, ImageDataset) else None


class DeviceLoader:
    """Batches of an ImageDataset (or a Subset of one) made on the device the images live on.

    Why it is fast: a batch is one gather of uint8 images (784 bytes each for Fashion-MNIST) by
    shuffled indices and one batched bilinear resize, so nothing 224x224 is stored or copied
    between processes, and there is no per-image Python. Like DataLoader(shuffle=train) it draws
    a new order from torch's global generator each pass and keeps the last partial batch."""

    def __init__(self, dataset: ImageDataset, indices: torch.Tensor | None, batch_size: int, shuffle: bool):
        self.images, self.labels, self.transform = dataset.images, dataset.labels, dataset.transform
        self.indices, self.batch_size, self.shuffle = indices, batch_size, shuffle

    def __len__(self) -> int:
        n = len(self.labels) if self.indices is None else len(self.indices)
        return -(-n // self.batch_size)

    def to(self, device) -> DeviceLoader:
        """Keep a copy of the images on ``device`` (the dataset itself stays where it is)."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self

    def __iter__(self):
        n = len(self.labels) if self.indices is None else len(self.indices)
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        if self.indices is not None:
            order = self.indices[order]
        for b in order.to(self.images.device).split(self.batch_size):
            yield self.transform(self.images[b]), self.labels[b]


class FashionMNIST(DataModule):
    """Fashion-MNIST, 60,000 training and 10,000 validation images of 10 kinds of clothing,
    resized to ``resize`` (an int or (height, width)). Read from this machine (alexnet.data finds
    it, or pass ``root``); ``num_workers`` only serves datasets that are not ours."""

    def __init__(self, batch_size=64, resize=(28, 28), root=None, num_workers=4):
        super().__init__(root=root, num_workers=num_workers)
        self.save_hyperparameters()
        _count("FashionMNIST", "batch_size", batch_size, 1)  # else torch's split fails far from here
        size = _as_size(resize)
        ds = D.load_dataset("fashion-mnist", root)
        self.train = ImageDataset(ds.train.images, ds.train.labels, size)
        self.val = ImageDataset(ds.test.images, ds.test.labels, size)
        self.classes = list(ds.classes)

    def text_labels(self, indices):
        return [self.classes[int(i)] for i in indices]

    def get_dataloader(self, train):
        dataset = self.train if train else self.val
        ours = _resolve(dataset)
        if ours is not None:
            return DeviceLoader(*ours, self.batch_size, shuffle=train)
        return torch.utils.data.DataLoader(dataset, self.batch_size, shuffle=train, num_workers=self.num_workers)

    def visualize(self, batch, nrows=1, ncols=8, labels=()):
        X, y = batch
        show_images(X.squeeze(1), nrows, ncols, titles=list(labels) or self.text_labels(y))


# ---------------------------------------------------------------------------------------------
# Training


class Trainer(HyperParameters):
    """fit(model, data): max_epochs of training and validation, on the first of ``num_gpus`` GPUs
    if there is one, else on the CPU; one line per epoch and the model's board."""

    def __init__(self, max_epochs, num_gpus=0, gradient_clip_val=0, verbose=True):
        _count("Trainer", "max_epochs", max_epochs, 1)  # -1 trained nothing, silently
        _count("Trainer", "num_gpus", num_gpus, 0)
        self.save_hyperparameters()
        self.gpus = [gpu(i) for i in range(min(num_gpus, torch.cuda.device_count()))]
        self.device = self.gpus[0] if self.gpus else cpu()
        self.history: list[dict] = []

    def prepare_data(self, data):
        self.train_dataloader = data.train_dataloader()
        self.val_dataloader = data.val_dataloader()
        for loader in (self.train_dataloader, self.val_dataloader):
            if isinstance(loader, DeviceLoader):
                loader.to(self.device)  # the uint8 images, once; batches are then made there
        self.num_train_batches = len(self.train_dataloader)
        self.num_val_batches = len(self.val_dataloader) if self.val_dataloader is not None else 0

    def prepare_model(self, model):
        model.trainer = self
        model.board.xlim = [0, self.max_epochs]
        model.board._handle = None  # a new figure in this cell, not a redraw of an earlier one
        model.to(self.device)
        if speed.channels_last:
            # A one-channel input is the same bytes in either layout, so the weights decide the
            # layout of every activation: they must be converted, and for that they must exist.
            if any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in model.modules()):
                self._shape_lazy_layers(model)
            model.to(memory_format=torch.channels_last)
        self.model = model

    def _shape_lazy_layers(self, model):
        """One forward pass on one training image, in eval mode (batch norm statistics and
        dropout untouched), so that lazy layers take their shapes and deferred inits run."""
        loader = self.train_dataloader
        if isinstance(loader, DeviceLoader):
            x = loader.transform(loader.images[:1])
        else:
            x = next(iter(loader))[0][:1]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(x.to(self.device))
        model.train(was_training)

    def prepare_batch(self, batch):
        batch = [a.to(self.device, non_blocking=True) for a in batch]
        if speed.channels_last and batch[0].dim() == 4:
            batch[0] = batch[0].contiguous(memory_format=torch.channels_last)
        if getattr(self, "model", None) is not None and self.model.training:
            self._images = getattr(self, "_images", 0) + len(batch[-1])  # for the epoch's images/s
        return batch

    def clip_gradients(self, grad_clip_val, model):
        """Scale all gradients down together when their global norm exceeds grad_clip_val."""
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        torch._foreach_mul_(grads, (grad_clip_val / norm).clamp(max=1.0))  # no host sync for the test

    def log(self, label, value):
        """Called by Module.plot: the epoch's values, averaged in the printed line."""
        self._logged.setdefault(label, []).append(value)

    def _autocast(self):
        enabled = speed.bf16 and bf16_autocast("auto", self.device)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def fit(self, model, data):
        self.board_path = None
        self.prepare_data(data)
        self.prepare_model(model)
        self.optim = model.configure_optimizers()
        self.epoch = 0
        self.train_batch_idx = 0
        self.val_batch_idx = 0
        for self.epoch in range(self.max_epochs):  # noqa: B020 (the book keeps the epoch on the trainer)
            self._logged, self._images, start = {}, 0, time.perf_counter()
            self.fit_epoch()
            self._end_epoch(time.perf_counter() - start)
        return self.history

    def fit_epoch(self):
        self.model.train()
        for batch in self.train_dataloader:
            with self._autocast():
                loss = self.model.training_step(self.prepare_batch(batch))
            self.optim.zero_grad()
            loss.backward()
            if self.gradient_clip_val > 0:
                self.clip_gradients(self.gradient_clip_val, self.model)
            self.optim.step()
            self.train_batch_idx += 1
        if self.val_dataloader is None:
            return
        self.model.eval()
        with torch.no_grad():
            for batch in self.val_dataloader:
                with self._autocast():
                    self.model.validation_step(self.prepare_batch(batch))
                self.val_batch_idx += 1

    def _end_epoch(self, seconds: float) -> None:
        row = {"epoch": self.epoch + 1}
        for label, values in self._logged.items():
            row[label] = float(sum(values) / len(values))  # one host sync per value per epoch
        row["images_per_s"] = self._images / seconds
        row["seconds"] = seconds
        self.history.append(row)
        board = self.model.board
        if board.display and not _in_jupyter() and board.data:
            folder = Path(os.environ.get("ALEXNET_D2L_BOARD_DIR", "."))
            self.board_path = board.save(folder / f"d2l-board-{type(self.model).__name__}.png")
        if self.verbose:
            cells = [f"epoch {self.epoch + 1}/{self.max_epochs}"]
            cells += [f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "images_per_s", "seconds")]
            cells += [f"{row['images_per_s']:.1f} img/s", f"{seconds:.1f} s"]
            # d2l trains on through a NaN; the line at least says so.
            bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                cells.append(f"({', '.join(bad)} not finite: training has diverged; lower the lr?)")
            if self.board_path is not None and self.epoch == 0:
                cells.append(f"(board: {self.board_path})")
            print("  ".join(cells), flush=True)
