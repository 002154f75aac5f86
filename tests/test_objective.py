"""The region constraint and its smooth variant (objective.eps, issue 13.5), checked analytically in
float64: the paper's norm has a unit-length gradient however small I - I0 is; the smooth form's
gradient vanishes there and equals the norm's away from it."""
from __future__ import annotations

import math

import pytest
import torch

from focusnfix.methods.objective import region_constraint

N = 3 * 8 * 8  # elements of one (3, 8, 8) image


def _grad(d: torch.Tensor, mask: torch.Tensor, eps: float, norm: str = "fro") -> tuple[torch.Tensor, torch.Tensor]:
    images = d.clone().requires_grad_(True)
    value = region_constraint(images, torch.zeros_like(d), mask, norm, eps)
    value.sum().backward()
    return value.detach(), images.grad


@pytest.fixture
def mask() -> torch.Tensor:
    m = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    m[..., 2:5, 3:6] = 1.0  # the problem region: excluded from the constraint
    return m


def test_eps_zero_is_the_papers_frobenius_norm(mask):
    d = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    value, grad = _grad(d, mask, eps=0.0)
    outside = (1 - mask) * d
    expected = outside.flatten(1).norm(dim=1)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, outside / expected.view(-1, 1, 1, 1), rtol=1e-12, atol=1e-15)
    rms, _ = _grad(d, mask, eps=0.0, norm="rms")
    torch.testing.assert_close(rms, expected / math.sqrt(N), rtol=1e-12, atol=0)


def test_rounding_sized_difference_gets_full_weight_from_the_norm_and_almost_none_when_smoothed(mask):
    # I - I0 of 1e-6 per element (float32 rounding of values near 1): the norm's gradient is a unit vector
    d = 1e-6 * torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, g_paper = _grad(d, mask, eps=0.0)
    assert g_paper.norm().item() == pytest.approx(1.0, rel=1e-12)
    eps = 1e-3
    value, g_smooth = _grad(d, mask, eps=eps)
    e, dn = eps * math.sqrt(N), ((1 - mask) * d).norm().item()
    # gradient d / sqrt(|d|^2 + e^2): length |d| / sqrt(|d|^2 + e^2) <= |d| / e (about 1e-5 here)
    assert g_smooth.norm().item() == pytest.approx(dn / math.sqrt(dn**2 + e**2), rel=1e-9)
    assert g_smooth.norm().item() < 1e-3 * g_paper.norm().item()
    assert 0.0 <= value.item() <= dn**2 / (2 * e) * (1 + 1e-9)  # sqrt(x^2 + e^2) - e <= x^2 / (2e)


def test_smooth_form_matches_the_norm_for_real_changes(mask):
    eps = 1e-3
    d = 0.05 * torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    v0, g0 = _grad(d, mask, eps=0.0)
    v1, g1 = _grad(d, mask, eps=eps)
    e = eps * math.sqrt(N)
    assert torch.all(v1 <= v0) and torch.all(v0 - v1 <= e)  # within e of the norm, below it
    cos = torch.nn.functional.cosine_similarity(g0.flatten(1), g1.flatten(1), dim=1)
    torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)  # same direction
    ratio = g1.flatten(1).norm(dim=1) / g0.flatten(1).norm(dim=1)
    torch.testing.assert_close(ratio, v0 / torch.sqrt(v0**2 + e**2), rtol=1e-9, atol=0)  # length |d|/sqrt(|d|^2+e^2)
    assert torch.all(ratio > 0.99)  # |d| ~ 0.05 sqrt(N) >> e


def test_identical_images_give_zero_value_and_gradient(mask):
    for eps in (0.0, 1e-3):
        value, grad = _grad(torch.zeros(1, 3, 8, 8, dtype=torch.float64), mask, eps=eps)
        assert value.item() == 0.0 and torch.count_nonzero(grad) == 0
