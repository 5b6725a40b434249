"""The chapter's code, unchanged, on this project's pipeline.

Replace ``from d2l import torch as d2l`` with ``from alexnet import d2l`` and the chapter's cells
(``class AlexNet(d2l.Classifier)``, ``layer_summary``, ``d2l.FashionMNIST(batch_size=128,
resize=(224, 224))``, ``d2l.Trainer(max_epochs=10, num_gpus=1).fit(model, data)``) run as
written, with the data on the device, resized in batch, channels_last, and bf16 on a GPU.

One deliberate difference: d2l 1.0's ``init_cnn`` tests ``type(module) == nn.Conv2d``, which is
never true of a ``LazyConv2d`` before its first forward pass, so the chapter's
``self.net.apply(d2l.init_cnn)`` silently leaves the default initialisation and the book's own
run sits at loss 2.30 for two epochs. Here ``init_cnn`` on a lazy layer takes effect when the
layer materialises, so the chapter's class ends up Xavier-initialised as the text intends.
"""

from __future__ import annotations

import inspect
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from . import data as D
from .device import autocast, bf16_autocast, select_device


def init_cnn(module: nn.Module) -> None:
    """Xavier-uniform weights for conv and linear layers, lazy ones included (at materialisation)."""
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        # A lazy module infers its shapes in a forward pre-hook registered when it was built; this
        # hook is registered later, so it runs after the weights exist and before they are used.
        def hook(m, args):
            handle.remove()
            nn.init.xavier_uniform_(m.weight)

        handle = module.register_forward_pre_hook(hook)
    elif isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)


class HyperParameters:
    def save_hyperparameters(self, ignore=()):
        """Store the caller's arguments as attributes, as d2l does."""
        frame = inspect.currentframe().f_back
        _, _, _, local_vars = inspect.getargvalues(frame)
        for k, v in local_vars.items():
            if k not in set(ignore) | {"self"} and not k.startswith("_"):
                setattr(self, k, v)


class Module(nn.Module, HyperParameters):
    """d2l.Module: a network with its loss, steps and optimiser."""

    def __init__(self, plot_train_per_epoch=2, plot_valid_per_epoch=1):
        super().__init__()
        self._logged: dict[tuple[str, bool], list] = {}

    def loss(self, y_hat, y):
        raise NotImplementedError

    def forward(self, X):
        return self.net(X)

    def plot(self, key, value, train):
        # Kept on the device; Trainer averages once per epoch instead of syncing every step.
        self._logged.setdefault((key, train), []).append(value.detach().float())

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
        self.forward(*inputs)
        if init is not None:
            self.net.apply(init)


class Classifier(Module):
    """d2l.Classifier: cross-entropy loss and accuracy."""

    def validation_step(self, batch):
        y_hat = self(*batch[:-1])
        self.plot("loss", self.loss(y_hat, batch[-1]), train=False)
        self.plot("acc", self.accuracy(y_hat, batch[-1]), train=False)

    def accuracy(self, y_hat, y, averaged=True):
        y_hat = y_hat.reshape((-1, y_hat.shape[-1]))
        compare = (y_hat.argmax(axis=1).type(y.dtype) == y.reshape(-1)).type(torch.float32)
        return compare.mean() if averaged else compare

    def loss(self, y_hat, y, averaged=True):
        y_hat = y_hat.reshape((-1, y_hat.shape[-1]))
        return F.cross_entropy(y_hat.float(), y.reshape((-1,)), reduction="mean" if averaged else "none")

    def layer_summary(self, X_shape):
        X = torch.randn(*X_shape)
        for layer in self.net:
            X = layer(X)
            print(layer.__class__.__name__, "output shape:\t", X.shape)


class _Loader:
    """A re-iterable batch stream over a device-resident split; each pass is a new epoch."""

    def __init__(self, split: D.Split, transform: D.Transform, batch_size: int, train: bool):
        self.split, self.transform, self.batch_size, self.train = split, transform, batch_size, train
        self.epoch = 0

    def __len__(self):
        return D.steps_per_epoch(len(self.split), self.batch_size, train=False)

    def __iter__(self):
        self.epoch += 1
        # The chapter's loader keeps the last partial batch; so does this one.
        idx = D.epoch_indices(len(self.split), self.epoch, seed=0, shuffle=self.train)
        for b in D.batches(idx.to(self.split.images.device), self.batch_size):
            yield self.transform(self.split.images[b], train=False), self.split.labels[b]


class FashionMNIST(HyperParameters):
    """d2l.FashionMNIST(batch_size, resize): the same batches, made on the device."""

    def __init__(self, batch_size=64, resize=(28, 28), root=None, num_workers=4):
        self.save_hyperparameters()
        ds = D.load_dataset("fashion-mnist", root)
        self.train, self.val, self.classes = ds.train, ds.test, ds.classes
        self.device = torch.device("cpu")

    def to(self, device):
        self.train, self.val, self.device = self.train.to(device), self.val.to(device), torch.device(device)
        return self

    def text_labels(self, indices):
        return [self.classes[int(i)] for i in indices]

    def get_dataloader(self, train):
        transform = D.Transform(self.resize[0], channels_last=self.device.type != "mps")
        return _Loader(self.train if train else self.val, transform, self.batch_size, train)

    def train_dataloader(self):
        return self.get_dataloader(train=True)

    def val_dataloader(self):
        return self.get_dataloader(train=False)


class Trainer(HyperParameters):
    """d2l.Trainer(max_epochs, num_gpus): fit(model, data), printing one line per epoch."""

    def __init__(self, max_epochs, num_gpus=0, gradient_clip_val=0, verbose=True):
        self.save_hyperparameters()
        self.history: list[dict] = []

    def fit(self, model: Module, data: FashionMNIST):
        device = select_device("cuda" if self.num_gpus and torch.cuda.is_available() else "cpu")
        data.to(device)
        self.train_dataloader, self.val_dataloader = data.train_dataloader(), data.val_dataloader()
        x, _ = next(iter(self.val_dataloader))
        with torch.no_grad():
            model(x[:1].cpu())  # materialise lazy layers (and run the deferred init_cnn) on the CPU
        model.to(device, memory_format=torch.channels_last)
        self.model, self.optim, amp = model, model.configure_optimizers(), bf16_autocast("auto", device)
        for self.epoch in range(self.max_epochs):
            t0 = time.perf_counter()
            model.train()
            seen = 0
            for X, y in self.train_dataloader:
                with autocast(device, amp):
                    loss = model.training_step((X, y))
                self.optim.zero_grad(set_to_none=True)
                loss.backward()
                if self.gradient_clip_val > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), self.gradient_clip_val)
                self.optim.step()
                seen += len(y)
            rate = seen / (time.perf_counter() - t0)
            model.eval()
            with torch.inference_mode():
                for X, y in self.val_dataloader:
                    with autocast(device, amp):
                        model.validation_step((X, y))
            row = {"epoch": self.epoch + 1, "examples_per_s": rate}
            for (key, train), values in model._logged.items():
                row[("train_" if train else "val_") + key] = torch.stack(values).mean().item()
            model._logged.clear()
            self.history.append(row)
            if self.verbose:
                print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        return self.history
