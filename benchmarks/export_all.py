"""Every registered network through every export format, with the parity check `alexnet export`
runs (docs/export.md): for each network a short real run (one epoch on the first training images
of Fashion-MNIST, so its weights have moved off their initialisation), then ONNX, safetensors and
.pt2, each checked on the first test images. A network that cannot export gets its one line.

    python benchmarks/export_all.py --out runs/export-all      # ~15 min beside other jobs, 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alexnet.config import PRESETS
from alexnet.export import FORMATS, ExportError, export
from alexnet.measure import timed
from alexnet.models import MODELS
from alexnet.tables import Column, markdown
from alexnet.train import fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/export-all")
    p.add_argument("--train-images", type=int, default=512)
    p.add_argument("--check-images", type=int, default=256)
    p.add_argument("--only", help="comma-separated networks (default: all registered)")
    args = p.parse_args()
    out = Path(args.out)
    names = args.only.split(",") if args.only else list(MODELS)
    rows = []
    for name in names:
        run = out / name
        if not (run / "last.pt").exists():
            cfg = PRESETS["cpu"].replace(
                model=name,
                epochs=1,
                batch_size=32,
                limit_train=args.train_images,
                limit_test=args.check_images,
                amp="off",
            )
            fit(cfg, run, progress=False, quiet=True)
        for fmt in FORMATS:
            row = {"network": name, "format": fmt}
            try:
                dest = out / f"{name}{FORMATS[fmt]}"
                r, seconds = timed(
                    lambda: export(run, fmt, dest, check_images=args.check_images, say=lambda s: None),  # noqa: B023
                    "cpu",
                )
                row.update(
                    max_diff=r.parity.max_abs_diff,
                    tolerance=r.parity.tolerance,
                    agree=r.parity.top1_agree,
                    images=r.parity.images,
                    MB=r.bytes / 1e6,
                    seconds=seconds,
                    result="ok",
                )
            except ExportError as e:
                row.update(result=str(e))
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = [
        Column("network", left=True),
        Column("format", left=True),
        Column("max_diff", "max abs logit diff", "{:.1e}"),
        Column("tolerance", "tolerance", "{:.1e}"),
        Column("agree", "top-1 agreement", "{:.4f}"),
        Column("images", "test images"),
        Column("MB", "file MB", "{:.1f}"),
        Column("seconds", "export + check s", "{:.0f}"),
        Column("result", left=True),
    ]
    table = markdown(rows, cols)
    (out / "parity.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
