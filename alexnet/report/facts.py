"""What a report knows about one run: its settings, metrics and checkpoints read once (``read_facts``),
its network evaluated again on its test split (``evaluate_facts``), its first layer rebuilt as it
was before training, and the book's published points for the chapter's recipe.

Every number a report prints comes from here, or from the run's weights in the sections; the only
typed numbers are the book's, in BOOK, with their source.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..confusion import confusion_matrix
from .compare import NOT_RECIPE


@dataclass(frozen=True)
class BookPoint:
    """A point the book published for its AlexNet recipe (our `d2l` preset), to overlay on the curves."""

    source: str
    epoch: int
    key: str  # a metrics key: train_loss, train_acc or val_acc
    value: float
    approximate: bool = False


BOOK = (
    # d2l 0.17 (MXNet/PyTorch, one V100), §7.1's output after 10 epochs.
    BookPoint("d2l 0.17, V100", 10, "train_loss", 0.327),
    BookPoint("d2l 0.17, V100", 10, "train_acc", 0.880),
    BookPoint("d2l 0.17, V100", 10, "val_acc", 0.882),
    # d2l 1.0's notebooks: the loss sits at log(10) = 2.30 for about two epochs (its lazy layers are
    # never Xavier-initialised), and the run ends near 0.83.
    BookPoint("d2l 1.0 notebooks", 1, "train_loss", 2.30, True),
    BookPoint("d2l 1.0 notebooks", 2, "train_loss", 2.30, True),
    BookPoint("d2l 1.0 notebooks", 10, "val_acc", 0.83, True),
)

# Settings that do not change what the chapter's recipe computes: how long, the seed, and where
# and in which layout or precision it runs.
_NOT_THE_RECIPE = NOT_RECIPE | {"epochs", "amp", "channels_last"}


def is_d2l_recipe(cfg) -> bool:
    """Whether a run is the chapter's recipe (the `d2l` preset up to its length, seed and machine)."""
    from ..config import PRESETS

    ref = PRESETS["d2l"].flat()
    return all(v == ref[k] for k, v in cfg.flat().items() if k not in _NOT_THE_RECIPE and k in ref)


PLAN_KEYS = {"budget_s", "step_s", "eval_s", "startup_s", "steps", "steps_per_epoch", "schedule_steps"}


@dataclass
class RunFacts:
    """A run as one page shows it. Its history and position (metrics, epoch, step, plan, machine,
    changes) are last.pt's, the truth of where a run is; its network (the evaluation, per-class
    accuracy, filters, activations) is ``net``'s, the checkpoint `alexnet predict RUN` and serve's
    Explore page take too (status.network_checkpoint: best.pt, else last.pt)."""

    dir: Path
    record: dict  # read_run's shape: dir, config, cfg, metrics, in_channels, num_classes, resolution
    ckpt: dict | None  # last.pt; None: the run has no last.pt, its metrics are all there is
    live: str | None  # the lock's holder while the run is being written
    missing: dict = field(default_factory=dict)  # section -> why it could not be computed
    # The network's checkpoint, loaded once: best.pt's, or the very dict ``ckpt`` when best.pt is
    # absent. None: the run has neither, or best.pt cannot be read (``missing`` says why), or
    # read_facts was asked for the history alone.
    net: dict | None = None

    @property
    def net_file(self) -> str:
        """The name of the file the network was read from: best.pt or last.pt."""
        return Path(self.net["path"]).name

    def net_row(self) -> dict | None:
        """The metrics row train logged for the network's epoch, the evaluation made of these very
        weights; None for a checkpoint taken mid-epoch, whose weights no row describes."""
        if self.net is None or self.net["step"]:
            return None
        epoch = self.net["epoch"]
        for rows in (self.metrics, self.net["metrics"]):  # best.pt's epoch is in last.pt's rows, unless a
            row = next((r for r in rows if r.get("epoch") == epoch), None)  # live run wrote it after them
            if row is not None and type(row.get("val_acc")) in (int, float):
                return row
        return None

    @property
    def cfg(self):
        return self.record["cfg"]

    @property
    def metrics(self) -> list[dict]:
        return self.record["metrics"]

    @property
    def plan(self) -> dict | None:
        """A --time-budget run's plan (budget.Plan), as last recorded: config.json is rewritten after
        the final evaluation, the checkpoint before it."""
        text = read_regular(self.dir / "config.json", MAX_CONFIG_BYTES)
        try:
            plan = json.loads(text[0])["plan"] if text and text[2] <= MAX_CONFIG_BYTES else None
        except (ValueError, TypeError, KeyError):
            plan = None
        if plan is None:
            plan = (self.ckpt or {}).get("plan")
        return plan if isinstance(plan, dict) and PLAN_KEYS <= plan.keys() else None

    @property
    def machine(self) -> dict:
        """The checkpoint's record of the machine, each field kept only when it has the type
        alexnet train writes (a checkpoint is data from outside: an odd field is 'not recorded')."""
        mach = (self.ckpt or {}).get("machine")
        if not isinstance(mach, dict):
            return {}
        kinds = {
            "cpu": str,
            "device": str,
            "cpu_count": int,
            "torch_threads": int,
            "load_average_1m": (int, float),
        }
        out = {k: mach[k] for k, t in kinds.items() if isinstance(mach.get(k), t) and not isinstance(mach[k], bool)}
        flags = mach.get("cpu_flags")
        if isinstance(flags, list) and all(isinstance(f, str) for f in flags):
            out["cpu_flags"] = flags
        return out

    @property
    def changes(self) -> list[dict]:
        """The settings changed on resume, as the checkpoint lists them (entries of another shape left out)."""
        changes = (self.ckpt or {}).get("changes")
        keys = {"epoch", "setting", "from", "to"}
        return [c for c in changes if isinstance(c, dict) and keys <= c.keys()] if isinstance(changes, list) else []

    def status(self) -> str:
        """The run's status in the one vocabulary serve shows too (runs.run_status), as a sentence."""
        from ..runs import epochs_planned, run_status

        return run_status(
            self.metrics,
            epochs_planned(self.cfg.train.epochs, self.plan),
            live=self.live,
            checkpoint=self.ckpt is not None,
            epoch=int(self.ckpt["epoch"]) if self.ckpt else None,
            step=int(self.ckpt["step"]) if self.ckpt else 0,
        ).sentence()


# What every metrics row holds (train.Session writes them), each a number; the report reads them all.
METRIC_KEYS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "train_images_per_s",
    "train_time_s",
    "eval_time_s",
    "epoch_time_s",
)
MAX_CONFIG_BYTES = 1 << 20  # config.json is about 2 kB


def read_regular(path: Path, n: int) -> tuple[str, str, int] | None:
    """The first and the last ``n`` bytes of a regular file as text, and its size; None for anything
    else: a symlink, a FIFO or a directory is never read, and opening one never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        head, tail = os.pread(fd, n, 0), os.pread(fd, n, max(0, st.st_size - n))
    except OSError:
        return None
    finally:
        os.close(fd)
    return head.decode(errors="replace"), tail.decode(errors="replace"), st.st_size


def _checkpoint(path: Path) -> dict:
    """A checkpoint file of the run (runs.load_checkpoint), refused in one line when it is a
    directory: load_checkpoint would take a directory for a run and look inside it."""
    from ..runs import RunError, load_checkpoint, not_regular

    why = not_regular(path)
    if why:
        raise RunError(f"{path}: {why}")
    return load_checkpoint(path)


def read_facts(run_dir: str | Path, network: bool = True) -> RunFacts:
    """The run's settings, metrics and (if any) checkpoints, read once: each checkpoint is loaded
    whole into memory, so a live run replacing it meanwhile cannot mix two epochs into one page.
    ``network``: also load the network's checkpoint (best.pt, else last.pt) into ``net``; a
    comparison, which reads only the history, leaves it out. A best.pt that cannot be read leaves
    the history whole and ``missing`` saying why the network cannot be shown (alexnet predict
    refuses it too: the page never shows last.pt's network in its place)."""
    from ..runs import RunError, live_holder, network_checkpoint, not_regular, read_run

    run = Path(run_dir)
    if not run.is_dir():
        raise RunError(f"{run}: not a run directory ({'a file' if run.exists() else 'no such directory'})")
    lock = run / ".lock"  # a FIFO put there would block live_holder's read forever
    live = live_holder(run) if not lock.exists() or not_regular(lock) is None else None
    chosen = network_checkpoint(run) if network else None
    net, missing = None, {}
    if chosen is not None and chosen.name != "last.pt":
        # Read before last.pt: a live run writes last.pt, then best.pt, so the network read here is
        # never of an epoch the history read next has not reached.
        try:
            net = _checkpoint(chosen)
        except RunError as e:
            missing["weights"] = missing["evaluation"] = str(e).replace(str(chosen), chosen.name, 1)
    if not (run / "last.pt").exists():
        record, ckpt = read_run(run), None
    else:
        ckpt = _checkpoint(run / "last.pt")
        if not ckpt["metrics"]:
            raise RunError(
                f"{run}: the run has no finished epoch (its checkpoint is at step {ckpt['step']} of epoch 1)"
            )
        record = {
            "dir": run,
            "config": ckpt["cfg"].to_dict(),
            "cfg": ckpt["cfg"],
            "metrics": list(ckpt["metrics"]),
            **{k: int(ckpt[k]) for k in ("in_channels", "num_classes", "resolution")},
        }
    for i, row in enumerate(record["metrics"], 1):
        bad = next((k for k in METRIC_KEYS if type(row.get(k)) not in (int, float)), None)
        if bad is not None:
            where = "last.pt" if ckpt else "metrics.jsonl"
            raise RunError(f"{run / where}: metrics row {i} has no number {bad!r}; not a row alexnet train writes")
    if chosen is not None and chosen.name == "last.pt":
        net = ckpt
    return RunFacts(run, record, ckpt, live, missing, net)


@dataclass
class Evaluation:
    """The network's weights (RunFacts.net) on the run's own test split, with the run's precision
    and batches."""

    acc: float
    loss: float
    confusion: object  # (K, K) counts, rows = true class
    preds: object  # (N,) predicted class per test image
    prob: object  # (N,) the predicted class's softmax probability
    labels: object  # (N,)
    images: object  # (N, C, h, w) uint8, as stored
    classes: list[str]
    transform: object  # what turns those images into the network's input
    seconds: float
    agrees: bool  # the per-image predictions give evaluate's confusion matrix


def evaluate_facts(facts: RunFacts, model, device, data_dir: str | None = None) -> Evaluation:
    """Evaluate with train.evaluate (the numbers the run logged come from it too) while a hook keeps
    each image's logits, for the misclassified pictures."""
    import torch

    from .. import data as D
    from ..device import bf16_autocast, channels_last_on
    from ..measure import timed
    from ..train import evaluate

    cfg = facts.cfg
    if data_dir:
        cfg = cfg.replace(data_dir=data_dir)
    data = D.InMemory(cfg, device, cfg.train.batch_size, cfg.train.eval_batch_size)
    model = model.to(device)
    if channels_last_on(cfg.system.channels_last, device):
        model = model.to(memory_format=torch.channels_last)
    outs = []
    hook = model.register_forward_hook(lambda m, i, o: outs.append(o.detach().float().cpu()))
    try:
        ev, seconds = timed(
            lambda: evaluate(
                model,
                data.val(),
                device=device,
                amp=bf16_autocast(cfg.system.amp, device),
                num_classes=len(data.classes),
                confusion=True,
                flip_tta=cfg.data.flip_tta,
            ),
            device,
        )
    finally:
        hook.remove()
    if cfg.data.flip_tta:  # evaluate's two calls per batch, the image then its mirror, averaged
        outs = [(a + b) / 2 for a, b in zip(outs[0::2], outs[1::2])]
    probs = torch.cat(outs).softmax(1)
    prob, preds = probs.max(1)
    labels = data.test.labels.cpu()
    k = len(data.classes)
    mine = confusion_matrix(labels, preds, k)
    return Evaluation(
        ev["acc"],
        ev["loss"],
        ev["confusion"],
        preds,
        prob,
        labels,
        data.test.images.cpu(),
        list(data.classes),
        data.transform,
        seconds,
        bool(torch.equal(mine, ev["confusion"])),
    )


def book_rows(metrics: list[dict]) -> list[dict]:
    """The book's points next to this run's value at the same epoch ('not reached' until it gets there)."""
    names = {"train_loss": "train loss", "train_acc": "train acc", "val_acc": "test acc"}
    rows = []
    for p in BOOK:
        mine = next((r[p.key] for r in metrics if r["epoch"] == p.epoch), None)
        rows.append(
            {
                "source": p.source,
                "epoch": p.epoch,
                "metric": names[p.key],
                "book": f"{'≈ ' if p.approximate else ''}{p.value:.3f}",
                "this run": f"{mine:.4f}" if mine is not None else f"not reached (epoch {len(metrics)})",
            }
        )
    return rows
