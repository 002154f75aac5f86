"""Small plain-torch networks for the world's rewards and judges, plus their input pipeline.

All networks take images ``(B, 3, H, W)`` in ``[0, 1]`` and are differentiable w.r.t. them.

* :class:`ArtifactNet`  - fully convolutional, per-pixel artifact logits ``(B, 1, H, W)``.
* :class:`SafetyNet`    - image-level logit of the unwanted element ``(B,)``.
* :class:`JudgeNet`     - independent defect judge, logits ``(B, 2)`` = (artifact, unwanted);
  a different architecture (ReLU, 5x5 stem, GroupNorm, global max-pool) from the rewards.
* :class:`OracleNet`    - alignment oracle, one logit vector per caption attribute.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import ATTRIBUTES


def _conv(cin: int, cout: int, stride: int = 1, dil: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dil, dilation=dil), nn.SiLU())


def _norm(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5


class ArtifactNet(nn.Module):
    """U-Net-lite at half resolution: 32 -> 16 -> 8 px and back, logits upsampled to input size."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.e1 = nn.Sequential(_conv(3, w, 2), _conv(w, w))
        self.e2 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))
        self.e3 = nn.Sequential(_conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w, dil=2))
        self.d2 = _conv(5 * w, 2 * w)
        self.d1 = _conv(3 * w, w)
        self.out = nn.Conv2d(w, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(_norm(x))
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        d2 = self.d2(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="bilinear"), e2], 1))
        d1 = self.d1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear"), e1], 1))
        return F.interpolate(self.out(d1), size=x.shape[-2:], mode="bilinear")


class SafetyNet(nn.Module):
    """Strided SiLU CNN, average+max global pooling, one logit (unwanted element present)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv(3, w), _conv(w, 2 * w, 2), _conv(2 * w, 3 * w, 2), _conv(3 * w, 4 * w, 2)
        )
        self.head = nn.Linear(8 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(_norm(x))
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return self.head(h).squeeze(1)


class JudgeNet(nn.Module):
    """Independent defect judge: 5x5 ReLU/GroupNorm CNN, global max-pool, 2 logits."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        w = width

        def blk(cin: int, cout: int, k: int, s: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2), nn.GroupNorm(4, cout), nn.ReLU())

        self.body = nn.Sequential(blk(3, w, 5, 2), blk(w, 2 * w, 3, 2), blk(2 * w, 2 * w, 3, 1),
                                  blk(2 * w, 3 * w, 3, 2))
        self.head = nn.Linear(3 * w, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x * 2 - 1).amax((2, 3)))


class OracleNet(nn.Module):
    """Alignment oracle: CNN to 8x8, flatten (keeps position), one linear head per attribute."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv(3, w), _conv(w, w, 2), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 2),
            nn.Conv2d(2 * w, 8, 1),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 128), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(128, len(v)) for k, v in ATTRIBUTES.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[-1] != 64 or x.shape[-2] != 64:
            x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
        h = self.fc(self.body(_norm(x)))
        return {k: head(h) for k, head in self.heads.items()}


NETS = {"artifact": ArtifactNet, "safety": SafetyNet, "judge": JudgeNet, "oracle": OracleNet}


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur of ``x (B,C,H,W)`` with ``sigma (B,)`` pixels (0 = identity)."""
    r = 3
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    s = sigma.clamp(min=1e-3)[:, None]
    k = torch.exp(-(t[None] ** 2) / (2 * s**2))
    k = k / k.sum(1, keepdim=True)  # (B, 7)
    b, c, h, w = x.shape
    y = x.reshape(1, b * c, h, w)
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), kx, groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), ky, groups=b * c)
    return y.reshape(b, c, h, w)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random blur (sigma 0-1.2 on half), noise (0-0.04), brightness/contrast (+-6 %)."""
    b = x.shape[0]
    sigma = torch.rand(b, generator=g) * 1.2 * (torch.rand(b, generator=g) < 0.5)
    x = gaussian_blur(x, sigma)
    gain = 1 + (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.12
    bias = (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.12
    noise = torch.randn(x.shape, generator=g) * torch.rand(b, 1, 1, 1, generator=g) * 0.04
    return (x * gain + bias + noise).clamp(0, 1)
