"""What the pictures of a network measure: how smooth a kernel is (its low-frequency share, against
chance) and how striped (its orientation strength), each checked on kernels whose answer is known."""

import math

import pytest
import torch

from alexnet.visualize import chance_share, low_frequency_share, orientation_strength


def _checkerboard(n):
    i = torch.arange(n)
    return ((-1.0) ** (i[:, None] + i[None, :]))[None, None]


def test_low_frequency_share_puts_a_constant_kernel_and_a_checkerboard_at_the_two_ends():
    assert low_frequency_share(torch.ones(1, 1, 11, 11)).item() == pytest.approx(1.0, abs=1e-12)
    assert low_frequency_share(_checkerboard(10)).item() == pytest.approx(0.0, abs=1e-12)
    assert low_frequency_share(_checkerboard(11)).item() < 0.01  # an odd side has no Nyquist bin: it leaks
    i = torch.arange(11.0)
    blob = torch.exp(-((i[:, None] - 5) ** 2 + (i[None, :] - 5) ** 2) / 8)[None, None]  # Gaussian, sigma 2 px
    assert low_frequency_share(blob).item() > 0.99
    noise = low_frequency_share(torch.randn(4000, 1, 11, 11, generator=torch.Generator().manual_seed(0)))
    assert noise.mean().item() == pytest.approx(chance_share(11, 11), abs=0.005)
    # Energy adds over input channels: a constant channel beside a checkerboard one of equal norm is half low.
    both = torch.cat([torch.ones(1, 1, 10, 10), _checkerboard(10)], 1)
    assert low_frequency_share(both).item() == pytest.approx(0.5, abs=1e-12)
    assert low_frequency_share(torch.zeros(1, 1, 11, 11)).item() == 0.0


def test_orientation_strength_tells_stripes_from_blobs():
    i = torch.arange(11.0)
    stripes = torch.cos(2 * math.pi * 2 * i / 11)[None, :].expand(11, 11)[None, None]
    diagonal = torch.cos(2 * math.pi * 2 * (i[:, None] + i[None, :]) / 11)[None, None]
    blob = torch.exp(-((i[:, None] - 5) ** 2 + (i[None, :] - 5) ** 2) / 8)[None, None]
    assert orientation_strength(stripes).item() == pytest.approx(1.0, abs=1e-9)
    assert orientation_strength(diagonal).item() == pytest.approx(1.0, abs=1e-9)
    assert orientation_strength(blob).item() == pytest.approx(0.0, abs=1e-9)
    assert orientation_strength(_checkerboard(11)).item() == pytest.approx(0.0, abs=1e-9)
    assert orientation_strength(torch.ones(1, 1, 11, 11)).item() == 0.0
    noise = orientation_strength(torch.randn(2000, 1, 11, 11, generator=torch.Generator().manual_seed(0)))
    assert 0.05 < noise.median().item() < 0.3  # finite noise is a little anisotropic by chance, never striped
