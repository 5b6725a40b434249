"""`alexnet compare`: the exercises' side-by-side table and curves from finished runs."""


from alexnet import train as T
from alexnet.cli import main
from alexnet.config import Config


def test_compare_tables_lenet_against_alexnet28(idx_dir, tmp_path, capsys):
    for model in ("lenet", "alexnet28"):
        cfg = Config(preset="test").replace(model=model, dataset="mnist", data_dir=str(idx_dir), epochs=1,
                                            batch_size=16)  # fmt: skip
        T.fit(cfg, tmp_path / model, progress=False, quiet=True)
    assert main(["compare", str(tmp_path / "lenet"), str(tmp_path / "alexnet28"), "--out", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    lenet_row = next(line for line in out.splitlines() if line.startswith("| lenet"))
    # LeNet-5 has 61,706 parameters and 0.85 MFLOPs per 28x28 image.
    assert "| 0.06 |" in lenet_row and "| 0.0008 |" in lenet_row
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "c.md").exists()


def test_compare_names_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a run directory (no last.pt or config.json)" in capsys.readouterr().err
