"""AlexNet (Dive into Deep Learning, §8.1) as a fast, measured PyTorch project."""

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it, runs record it
