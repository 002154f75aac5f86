"""Region-restricted image-change metrics: how much a method changed the image inside vs outside
the base image's problem mask M(Î0). Images ``(B,3,H,W)`` in [0, 1]; masks ``(B,1,H,W)`` in [0, 1]
(binarised at 0.5). Every function returns one value per image; ``nan`` marks an empty region and
``inf`` an identical region (PSNR)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..methods.objective import region_mse, region_of  # noqa: F401 (region_mse: re-exported)

SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # Wang et al. 2004, for data range 1
# The collateral rate: the share of images whose region outside M changed perceptibly, PSNR outside M below these
# (dB). The image-level analog of the paper's human question "were other aspects degraded?"; 35 dB is about where
# a change of a few grey levels becomes visible side by side, 30 dB clearly visible.
COLLATERAL_DB = (35, 30)


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for data range 1: ``10 log10(1 / mse)``; inf where mse = 0, nan stays nan."""
    value = 10 * torch.log10(1.0 / mse.clamp_min(1e-30))  # nan stays nan
    return torch.where(mse == 0, torch.full_like(mse, math.inf), value)


def ssim_map(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (Gaussian window, σ = 1.5, 11 px), averaged over channels: ``(B,1,H,W)``."""
    radius = min(5, (a.shape[-1] - 1) // 2, (a.shape[-2] - 1) // 2)
    x = torch.arange(-radius, radius + 1, dtype=a.dtype, device=a.device)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    c = a.shape[1]
    kernel = (g.view(-1, 1) * g.view(1, -1)).expand(c, 1, -1, -1).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (radius,) * 4, mode="reflect"), kernel, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = (((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2))
         / ((mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)))
    return s.mean(1, keepdim=True)


def region_ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, inside: bool,
                smap: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM over the region, ``(B,)``; nan if the region is empty. The SSIM window (11 px) sees
    across the mask border, so a change only inside lowers outside-SSIM slightly near the border.
    ``smap``: ``ssim_map(a, b)`` if already computed."""
    r = region_of(mask, inside)
    area = r.flatten(1).sum(1)
    value = ((ssim_map(a, b) if smap is None else smap) * r).flatten(1).sum(1) / area.clamp_min(1)
    return torch.where(area > 0, value, torch.full_like(value, math.nan))


def change_metrics(images: torch.Tensor, base: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean absolute change, MSE, PSNR and SSIM of ``images`` against ``base`` inside and outside ``mask``, the
    outside change in grey levels, and the collateral flags, each ``(B,)``."""
    out, smap = {}, ssim_map(images, base)  # one SSIM map for both regions
    for where, inside in (("inside", True), ("outside", False)):
        out[f"{where}_mae"] = region_mse(images, base, mask, inside, power=1)
        mse = region_mse(images, base, mask, inside)
        out[f"{where}_mse"], out[f"{where}_psnr"] = mse, psnr(mse)
        out[f"{where}_ssim"] = region_ssim(images, base, mask, inside, smap)
    out["outside_grey"] = 255.0 * out["outside_mae"]  # the unit of objective.budget
    for db in COLLATERAL_DB:  # 1 where the outside changed perceptibly, nan where there is no outside
        psnr_out = out["outside_psnr"]
        out[f"collateral_{db}"] = torch.where(psnr_out.isnan(), psnr_out, (psnr_out < db).to(psnr_out.dtype))
    return out
