"""What `alexnet exercises` trains: the budgets (how many images, epochs and seeds each affords) and
the plan (the configurations each exercise compares, the same at every budget)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import PRESETS, Config


@dataclass(frozen=True)
class Budget:
    """How much of each experiment a budget affords; the plan below is the same at every budget."""

    name: str
    # The duration each budget is sized for on 2 CPU cores, a target rather than a measurement: the one
    # place it is stated (`alexnet exercises --help` reads it). What a sweep took is measured and
    # written in the page's last section, from the runs' ledger.
    minutes: int
    seeds: tuple[int, ...]
    # Exercises 4 and 5 at 224x224: a fixed training subset (AlexNet at 224 is the slow one: the
    # page's tables give its images/s as measured).
    train224: int
    epochs224: int
    test224: int
    batch224: int
    # Exercise 4 at 28x28 (alexnet28 vs LeNet) and exercise 7 (the LeNet family).
    train28: int
    epochs28: int
    epochs7: int
    test28: int
    # Exercise 8: training-set sizes for overfitting (the first also hosts "breaking training").
    sizes8: tuple[int, ...]
    epochs8: tuple[int, ...]
    overfit_epochs: int  # on the smaller set: long, so the unregularised network overfits (the page says how far)
    batch: int = 128
    # Exercise 4 at 28x28 on the whole training set (None: every image), tested on the whole test set;
    # 0 epochs leaves it out of the budget.
    whole_epochs: int = 0
    whole_train: int | None = None
    whole_test: int | None = None


BUDGETS = {
    # CI: every table and figure is produced; the numbers mean nothing.
    "smoke": Budget(
        "smoke",
        1,
        (0, 1),
        train224=64,
        epochs224=1,
        test224=32,
        batch224=32,
        train28=128,
        epochs28=2,
        epochs7=1,
        test28=64,
        sizes8=(64, 128),
        epochs8=(2, 1),
        overfit_epochs=2,
        batch=32,
        whole_epochs=2,
        whole_train=256,
        whole_test=64,
    ),
    "small": Budget(
        "small",
        20,
        (0, 1, 2),
        train224=500,
        epochs224=8,
        test224=200,
        batch224=64,
        train28=5000,
        epochs28=10,
        epochs7=8,
        test28=2000,
        sizes8=(1000, 3000),
        epochs8=(20, 12),
        overfit_epochs=60,
    ),
    # What docs/exercises.md reports (PUBLISHED below); the page's last section gives what each part cost.
    "full": Budget(
        "full",
        80,
        (0, 1, 2),
        train224=1000,
        epochs224=8,
        test224=400,
        batch224=64,
        train28=10000,
        epochs28=15,
        epochs7=10,
        test28=5000,
        sizes8=(1000, 5000),
        epochs8=(30, 20),
        overfit_epochs=80,
        whole_epochs=20,
    ),
}


# The budget docs/exercises.md reports: only its page and figures go to docs/ by default; the others
# write beside their runs (runs/exercises-BUDGET/exercises.md), so a first smoke run touches no docs.
PUBLISHED = "full"


def default_page(budget: str, root: Path) -> Path:
    """Where `alexnet exercises --budget BUDGET` writes its page when --out is not given."""
    return Path("docs/exercises.md") if budget == PUBLISHED else root / "exercises.md"


@dataclass(frozen=True)
class Spec:
    """One configuration of one exercise, run once per seed into ``NAME-sSEED``."""

    name: str
    label: str
    preset: str
    changes: dict = field(default_factory=dict)

    def config(self, seed: int, data: dict) -> Config:
        return PRESETS[self.preset].replace(**{**self.changes, **data, "seed": seed, "log_every": 50})


NO_AUG = dict(crop_padding=0, flip=False)
CROP = 2  # exercise 7's random crops: pad by this many pixels, crop back to 28x28 (a shift of up to CROP)
LR_FACTORS = (10, 3)  # exercise 8 breaks training with the cpu recipe's own rate taken this many times
NO_REG = dict(model="alexnet28-nodrop", crop_padding=0, flip=False, weight_decay=0.0, label_smoothing=0.0)


def plan(b: Budget) -> dict[str, list[Spec]]:
    """The configurations each exercise compares, at budget ``b``."""
    return {**_ex4_5(b), **_ex7(b), **_ex8(b)}


def _ex4_5(b: Budget) -> dict[str, list[Spec]]:
    """Exercise 4: AlexNet against LeNet, at 224x224, 28x28 and on the whole set; exercise 5: its
    smaller variant on the same images."""
    s224 = dict(limit_train=b.train224, limit_test=b.test224, epochs=b.epochs224, batch_size=b.batch224)
    s28 = dict(limit_train=b.train28, limit_test=b.test28, epochs=b.epochs28, batch_size=b.batch)
    sw = dict(limit_train=b.whole_train, limit_test=b.whole_test, epochs=b.whole_epochs, batch_size=b.batch)
    return {
        "4-224": [
            Spec("ex4-alexnet224", "alexnet, 224x224", "fast", dict(model="alexnet", **s224)),
            Spec("ex4-lenet224set", "lenet (same images, 28x28)", "fast", dict(model="lenet", **s224)),
        ],
        "5": [
            Spec("ex4-alexnet224", "alexnet", "fast", dict(model="alexnet", **s224)),
            Spec("ex5-alexnet-small", "alexnet-small", "fast", dict(model="alexnet-small", **s224)),
        ],
        "4-28": [
            Spec("ex4-alexnet28", "alexnet28", "cpu", dict(model="alexnet28", **s28)),
            Spec("ex4-lenet", "lenet", "cpu", dict(model="lenet", **s28)),
        ],
        "4-whole": [
            Spec("ex4-whole-alexnet28", "alexnet28, whole set", "cpu", dict(model="alexnet28", **sw)),
            Spec("ex4-whole-lenet", "lenet, whole set", "cpu", dict(model="lenet", **sw)),
        ]
        if b.whole_epochs
        else [],
    }


def _ex7(b: Budget) -> dict[str, list[Spec]]:
    """Exercise 7: LeNet modernised a step at a time, with no augmentation until the last rows."""
    s7 = dict(limit_train=b.train28, limit_test=b.test28, epochs=b.epochs7, batch_size=b.batch, **NO_AUG)
    return {
        "7": [
            Spec("ex7-lenet", "LeNet (sigmoid)", "cpu", dict(model="lenet", **s7)),
            Spec("ex7-relu", "+ ReLU", "cpu", dict(model="lenet-relu-nodrop", **s7)),
            Spec("ex7-relu-dropout", "+ ReLU + dropout", "cpu", dict(model="lenet-relu", **s7)),
            Spec("ex7-flip", "+ ReLU + dropout + flips", "cpu", dict(model="lenet-relu", **{**s7, "flip": True})),
            Spec(
                "ex7-crop", "+ ReLU + dropout + crops", "cpu", dict(model="lenet-relu", **{**s7, "crop_padding": CROP})
            ),
            Spec(
                "ex7-both",
                "+ ReLU + dropout + flips + crops",
                "cpu",
                dict(model="lenet-relu", **{**s7, "flip": True, "crop_padding": CROP}),
            ),
        ],
    }


def _ex8(b: Budget) -> dict[str, list[Spec]]:
    """Exercise 8: what overfits on a small set (long runs, one regulariser removed at a time) and
    what breaks training (sigmoid, PyTorch's default init, too large a rate with and without warm-up)."""
    n1, n2 = b.sizes8
    e1, e2 = b.epochs8
    # Exercise 8 evaluates every epoch of many short runs: a smaller test set keeps evaluation from
    # costing more than the training.
    s8 = dict(limit_train=n1, limit_test=max(32, b.test28 // 5), epochs=e1, batch_size=b.batch)
    s8b = dict(limit_train=n2, limit_test=max(32, b.test28 // 5), epochs=e2, batch_size=b.batch)
    s8o = {**s8, "epochs": b.overfit_epochs}
    eo = b.overfit_epochs
    k10, k3 = LR_FACTORS
    lr10, lr3 = (round(k * PRESETS["cpu"].train.lr, 6) for k in LR_FACTORS)
    return {
        "8-overfit": [
            Spec("ex8-long-all", f"{n1} images × {eo}, all regularisers", "cpu", dict(model="alexnet28", **s8o)),
            Spec("ex8-long-nodrop", f"{n1} images × {eo}, no dropout", "cpu", dict(model="alexnet28-nodrop", **s8o)),
            Spec(
                "ex8-long-noaug",
                f"{n1} images × {eo}, no augmentation",
                "cpu",
                dict(model="alexnet28", **s8o, **NO_AUG),
            ),
            Spec(
                "ex8-long-nowd",
                f"{n1} images × {eo}, no weight decay",
                "cpu",
                dict(model="alexnet28", **s8o, weight_decay=0.0),
            ),
            Spec("ex8-long-none", f"{n1} images × {eo}, none", "cpu", dict(**s8o, **NO_REG)),
            Spec("ex8-all-n2", f"{n2} images × {e2}, all regularisers", "cpu", dict(model="alexnet28", **s8b)),
            Spec("ex8-none-n2", f"{n2} images × {e2}, none", "cpu", dict(**s8b, **NO_REG)),
        ],
        "8-break": [
            Spec("ex8-all", "the recipe (cpu preset)", "cpu", dict(model="alexnet28", **s8)),
            Spec("ex8-sigmoid", "sigmoid instead of ReLU", "cpu", dict(model="alexnet28-sigmoid", **s8)),
            Spec(
                "ex8-torchinit", "PyTorch default init (d2l 1.0's bug)", "cpu", dict(model="alexnet28-torchinit", **s8)
            ),
            Spec("ex8-lr10", f"lr {k10}x ({lr10:g}), with warm-up", "cpu", dict(model="alexnet28", **s8, lr=lr10)),
            Spec(
                "ex8-lr10-nowarm",
                f"lr {k10}x ({lr10:g}), no warm-up",
                "cpu",
                dict(model="alexnet28", **s8, lr=lr10, warmup_epochs=0.0),
            ),
            Spec("ex8-lr3", f"lr {k3}x ({lr3:g}), with warm-up", "cpu", dict(model="alexnet28", **s8, lr=lr3)),
            Spec(
                "ex8-lr3-nowarm",
                f"lr {k3}x ({lr3:g}), no warm-up",
                "cpu",
                dict(model="alexnet28", **s8, lr=lr3, warmup_epochs=0.0),
            ),
        ],
    }


EXERCISE_OF = {"4-224": "4", "4-28": "4", "4-whole": "4", "5": "5", "7": "7", "8-overfit": "8", "8-break": "8"}
