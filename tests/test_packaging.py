"""What `pip install .` gives a user: a wheel holding every module and data file of the package."""

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import alexnet

ROOT = Path(__file__).resolve().parents[1]


def package_files(root: Path) -> set[str]:
    """Every file a user of the package needs: the tree under alexnet/, less what Python writes itself."""
    return {
        p.relative_to(root).as_posix()
        for p in (root / "alexnet").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The wheel and the sdist, built by setuptools from a copy of the tree (no stale build/ can help)."""
    tmp = tmp_path_factory.mktemp("build")
    tree, dist = tmp / "tree", tmp / "dist"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (tree / name).write_bytes((ROOT / name).read_bytes())
    for f in package_files(ROOT):
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / f).write_bytes((ROOT / f).read_bytes())
    for hook in ("build_wheel", "build_sdist"):  # one process each: setuptools keeps state between them
        code = f"import sys; from setuptools import build_meta as b; b.{hook}(sys.argv[1])"
        r = subprocess.run(
            [sys.executable, "-c", code, str(dist)], cwd=tree, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr[-2000:]
    return next(dist.glob("*.whl")), next(dist.glob("*.tar.gz")), package_files(tree)


def test_the_wheel_holds_every_module_and_data_file_of_the_package(built):
    wheel, _, files = built
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "alexnet/exercises/__init__.py" in files  # the sub-package the hand-written list once left out
    assert {"alexnet/imagenet_classes.txt", "alexnet/static/app.js"} <= files
    assert not files - names, f"missing from the wheel: {sorted(files - names)}"


def test_the_sdist_holds_every_file_of_the_package(built):
    _, sdist, files = built
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert not files - names, f"missing from the sdist: {sorted(files - names)}"


def test_the_version_is_written_once_and_the_wheel_carries_it(built):
    wheel, _, _ = built
    assert wheel.name.startswith(f"alexnet-{alexnet.__version__}-")
    assert "version =" not in (ROOT / "pyproject.toml").read_text().split("[project]")[1].split("[")[0]
