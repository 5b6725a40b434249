"""`alexnet train --tensorboard`: the run's numbers as TensorBoard event files in its directory, so
`tensorboard --logdir runs` shows every run side by side.

    train/loss, train/acc        running means of the epoch so far, every --log-every steps
    train/lr, train/images_per_s at the same steps (x: the global step)
    epoch/*                      each metrics.jsonl row's numbers (x: the epoch)
    filters/first_layer          the first convolution's kernels as one image, each epoch
    weights/NAME                 a histogram of every parameter tensor, each epoch

Only the process that writes the run directory writes events, and only where numbers already reach
the host (the log interval's loss sync, the end of an epoch): the training step itself is untouched.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from torch import nn

from .filters import filter_cells, first_conv, mosaic


def _after_earlier_files(run_dir: Path) -> None:
    """Wait, at most a second, until a new event file's name sorts after every earlier one in the run.
    TensorBoard reads a run's files in name order (events.out.tfevents.SECONDS.HOST.PID...), and a
    resumed run whose file opened in the same second as the killed one's could sort first by its
    pid: its points, read before the killed run's, were then purged by them instead of the reverse."""
    newest = 0
    for f in run_dir.glob("events.out.tfevents.*"):
        with contextlib.suppress(IndexError, ValueError):
            newest = max(newest, int(f.name.split(".")[3]))
    while int(time.time()) <= newest:
        time.sleep(min(1.0, newest + 1 - time.time()) + 1e-3)


class Board:
    """The event writer of one run: created with the run, called where the metrics are produced."""

    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from .config import ConfigError

            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'alexnet[tensorboard]'"
            ) from None
        self._writer_class, self.writer = SummaryWriter, None

    def open(self, run_dir: Path, step: int = 0) -> None:
        """Write from global step ``step`` (the run's position) on. A resumed run appends a new event
        file beside the old ones, which TensorBoard reads as one; what a killed process logged after
        its last checkpoint (flushed every 10 s) is purged, as the resumed run logs those steps again.
        Epoch-wise events are written after their checkpoint, so none of them is ever beyond it."""
        _after_earlier_files(Path(run_dir))
        self.writer = self._writer_class(log_dir=str(run_dir), flush_secs=10, purge_step=step + 1)

    def interval(self, step: int, loss: float, acc: float, lr: float, images_per_s: float) -> None:
        w = self.writer
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("train/acc", acc, step)
        w.add_scalar("train/lr", lr, step)
        w.add_scalar("train/images_per_s", images_per_s, step)

    def epoch(self, row: dict, model: nn.Module) -> None:
        w, epoch = self.writer, row["epoch"]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                w.add_scalar(f"epoch/{key}", value, epoch)
        try:
            image, _, _ = mosaic(filter_cells(first_conv(model).weight.detach().float().cpu()))
            w.add_image("filters/first_layer", image, epoch, dataformats="HWC")
        except ValueError:  # a network without a convolution has no filters to show
            pass
        for name, p in model.named_parameters():
            w.add_histogram(f"weights/{name}", p.detach().float().cpu(), epoch)
        w.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
