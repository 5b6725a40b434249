"""Every setting of a run, in three plain dataclasses, and the named presets.

Each field's ``help`` is the command line's ``--help`` text (cli.py builds its flags from these).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f("fashion-mnist", "fashion-mnist, mnist, cifar10, imagefolder (DIR/train/<class>/*, "
                      "DIR/val/<class>/*) or imagelist (DIR/train.txt, DIR/val.txt: 'path label' lines)")
    data_dir: str | None = _f(None, "directory holding the dataset (else $ALEXNET_DATA, the cache, Debian's copy)")
    resolution: int | None = _f(None, "square input side the images are resized to (default: the model's own)")
    normalize: bool = _f(False, "subtract the dataset mean and divide by its std (the chapter feeds plain [0, 1] pixels)")
    crop_padding: int = _f(0, "train-time random crop after zero-padding by this many pixels (0: off)")
    flip: bool = _f(False, "train-time random horizontal flip")
    limit_train: int | None = _f(None, "use only the first N training images (quick runs)")
    limit_test: int | None = _f(None, "use only the first N test images (quick runs)")
    resize: int = _f(256, "image folders: the shorter side is resized to this, then cropped to --resolution")
    lighting: float = _f(0.0, "image folders: std of the PCA colour (lighting) augmentation (the paper: 0.1)")
    ten_crop: bool = _f(False, "image folders: evaluate on 10 crops (4 corners + centre, and flips), softmax averaged")
    workers: int = _f(8, "image folders: decoding worker processes per rank (0: decode in the training process)")
    stats_images: int = _f(1000, "image folders: training images sampled for colour mean/std and lighting eigenvectors")


@dataclass(frozen=True)
class TrainConfig:
    model: str = _f("alexnet", "network from the registry (see `alexnet models`)")
    epochs: int = _f(10, "passes over the training set")
    batch_size: int = _f(128, "training batch size (global, across data-parallel ranks)")
    eval_batch_size: int = _f(512, "evaluation batch size")
    lr: float = _f(0.01, "peak learning rate of SGD")
    momentum: float = _f(0.0, "SGD momentum")
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(0.0, "L2 weight decay")
    schedule: str = _f("constant", "learning-rate schedule: constant, cosine, step (/10 every --lr-step-epochs) or "
                       "plateau (/10 when validation error stalls for --lr-patience epochs)")
    lr_step_epochs: int = _f(30, "step schedule: epochs between divisions of the learning rate by 10")
    lr_patience: int = _f(5, "plateau schedule: epochs without a new best validation error before lr /= 10")
    warmup_epochs: float = _f(0.0, "linear learning-rate warm-up from 0, in epochs")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy loss")
    seed: int = _f(0, "seed of initialisation, data order, augmentation and dropout")


@dataclass(frozen=True)
class SystemConfig:
    device: str = _f("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    amp: str = _f("auto", "bf16 autocast: auto (on for GPUs and CPUs with bf16 units), bf16, or off")
    channels_last: bool = _f(True, "NHWC memory layout (faster convolutions on CPU and GPU)")
    compile: str = _f("auto", "torch.compile: auto (on for CUDA), on, or off")
    log_every: int = _f(25, "steps between progress-bar updates (the only host-device syncs)")
    model_parallel: str | None = _f(None, "run alexnet2012's two streams on two devices (as in 2012): cuda:0,cuda:1")


@dataclass(frozen=True)
class Config:
    preset: str = "d2l"
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    system: SystemConfig = SystemConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        def build(klass, values):
            names = {f.name for f in dataclasses.fields(klass)}
            return klass(**{k: v for k, v in values.items() if k in names})

        return cls(
            preset=d.get("preset", "custom"),
            data=build(DataConfig, d.get("data", {})),
            train=build(TrainConfig, d.get("train", {})),
            system=build(SystemConfig, d.get("system", {})),
        )

    def check(self) -> "Config":
        """Raise ValueError naming the first flag whose value cannot make a run."""
        d, t, s = self.data, self.train, self.system
        at_least_1 = dict(batch_size=t.batch_size, eval_batch_size=t.eval_batch_size, epochs=t.epochs,
                          log_every=s.log_every, lr_step_epochs=t.lr_step_epochs, resize=d.resize,
                          stats_images=d.stats_images, resolution=d.resolution, limit_train=d.limit_train,
                          limit_test=d.limit_test)  # fmt: skip
        not_negative = dict(weight_decay=t.weight_decay, warmup_epochs=t.warmup_epochs, crop_padding=d.crop_padding,
                            lr_patience=t.lr_patience, lighting=d.lighting, workers=d.workers)  # fmt: skip
        for name, v in at_least_1.items():
            if v is not None and v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {v}")
        for name, v in not_negative.items():
            if v < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, not {v}")
        if not t.lr > 0:
            raise ValueError(f"--lr must be positive, not {t.lr}")
        if not 0 <= t.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), not {t.momentum}")
        if not 0 <= t.label_smoothing < 1:
            raise ValueError(f"--label-smoothing must be in [0, 1), not {t.label_smoothing}")
        return self

    def replace(self, **flat) -> "Config":
        """A copy with fields changed by their flat name (``lr=0.1``), whichever section holds them."""
        sections = {"data": self.data, "train": self.train, "system": self.system}
        changes: dict[str, dict] = {k: {} for k in sections}
        for key, value in flat.items():
            for sec, obj in sections.items():
                if key in {f.name for f in dataclasses.fields(obj)}:
                    changes[sec][key] = value
                    break
            else:
                raise KeyError(key)
        return dataclasses.replace(
            self, **{sec: dataclasses.replace(sections[sec], **c) for sec, c in changes.items()}
        )


# The presets. `d2l` is the chapter's recipe, unchanged. `fast` and `cpu` share one modern recipe:
# Nesterov momentum, weight decay, linear warm-up then cosine decay, label smoothing, and
# crop + flip augmentation. AlexNet has no batch norm, so the warm-up matters: momentum 0.9 makes
# the effective step 10x larger and a cold start at full learning rate can blow up.
_MODERN = dict(momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
               warmup_epochs=1.0, label_smoothing=0.1, normalize=True, crop_padding=2, flip=True)  # fmt: skip

# The paper's recipe (§5): SGD, momentum 0.9, weight decay 5e-4, batch 128, lr 0.01 divided by 10
# when the validation error stopped improving (three times in ~90 epochs), crops from 256-pixel
# images, flips, and lighting noise of std 0.1. `paper-step` replaces the judgement call by a
# fixed /10 every 30 epochs, as most reproductions (torchvision's among them) do.
_PAPER = dict(model="alexnet2012", dataset="imagefolder", epochs=90, batch_size=128, lr=0.01, momentum=0.9,
              weight_decay=5e-4, resize=256, flip=True, lighting=0.1, normalize=True, eval_batch_size=256)  # fmt: skip
# A modern recipe for the same network (not run at ImageNet scale here): 4x the batch at 4x the
# rate, with Nesterov, a warm-up (no batch norm: a cold start at lr 0.04 can diverge), cosine
# decay, label smoothing, bf16 autocast and NHWC layout.
_IMAGENET_FAST = {**_PAPER, **dict(batch_size=512, lr=0.04, nesterov=True, schedule="cosine", warmup_epochs=2.0,
                                   label_smoothing=0.1, epochs=45, amp="bf16", channels_last=True)}  # fmt: skip

PRESETS: dict[str, Config] = {
    "d2l": Config(preset="d2l"),
    "fast": Config(preset="fast").replace(lr=0.01, **_MODERN),
    "cpu": Config(preset="cpu").replace(model="alexnet28", lr=0.05, batch_size=128, epochs=10, **_MODERN),
    "paper": Config(preset="paper").replace(schedule="plateau", lr_patience=5, **_PAPER),
    "paper-step": Config(preset="paper-step").replace(schedule="step", lr_step_epochs=30, **_PAPER),
    "imagenet-fast": Config(preset="imagenet-fast").replace(**_IMAGENET_FAST),
}
