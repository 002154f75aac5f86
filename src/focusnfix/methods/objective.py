"""The Focus-N-Fix objective (Xing et al., CVPR 2025, eq. 3), in pixel space:

    L(θ) = -r(Î, c) + λ · ‖(1 - M(Î0)) ⊙ (Î - Î0)‖_F

Î is the fine-tuned model's image, Î0 the frozen model's image for the same (c, x_T), M the problem
mask (1 = problem). With λ = 0 the loss is exactly DRaFT's ``-r(Î, c)``.

``norm="rms"`` is a normalised variant (not in the paper): the Frobenius norm divided by
``sqrt(3·H·W)``, i.e. the root-mean-square pixel change outside the mask, so λ means the same
at every resolution.

``objective.trajectory_weight`` = ρ > 0 (ours, not in the paper) adds λρ · (T − K) · mean_j ‖(1 − M↓) ⊙ (Δx_j^θ
− Δx_j^θ0)‖ over J random steps j of the first T − K: Δx_j is one step of the sampler from the fine-tuned
trajectory's latents x_j, taken by the fine-tuned model (with gradient) and by the frozen model (without),
compared outside the mask on the latent grid, so the sum estimates how far the LoRA moves the early, gradient-
free steps outside M. DRaFT-K's gradient reaches only the last K steps, but a LoRA acts at every step: on the
world (K = 2 of T = 20), a trained LoRA applied only in the first T − K steps made 90-95 % of its change
outside M and all of its fix, applied only in the last K steps 15-30 % and no fix (BENCHMARKS.md, "Where the
change comes from"), so the image term's gradient does not see most of what it constrains (giving it every step,
K = T, did not lower the change on the world either; the early-step term holds it, and the fix with it).

``eps > 0`` smooths the norm at Î = Î0 (ours, not in the paper). The norm is not squared, so its
gradient ``λ (Î - Î0) / ‖Î - Î0‖`` has length λ however small the difference: a fresh LoRA whose Î
differs from Î0 only by rounding (another batch size in the reference pass, GPU kernels) is pushed with
full weight along the rounding noise. The smooth form ``sqrt(‖d‖² + e²) - e``, with
``e = eps · sqrt(3·H·W)`` (eps in units of the RMS pixel change), has gradient ``d / sqrt(‖d‖² + e²)``:
about ``d / e`` (vanishing) while ‖d‖ << e, the paper's unit vector once ‖d‖ >> e. Its value is 0 at
Î = Î0, like the norm's, and within e of it everywhere.
"""
from __future__ import annotations

import math

import torch


def region_constraint(images: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, norm: str = "fro",
                      eps: float = 0.0) -> torch.Tensor:
    """‖(1 - M) ⊙ (Î - Î0)‖ per image, ``(B,)``. ``images``, ``ref``: ``(B,3,H,W)``; ``mask``: ``(B,1,H,W)``.
    ``eps > 0``: the smooth form ``sqrt(‖.‖² + e²) - e`` (module docstring), e = eps·sqrt(3·H·W)."""
    if norm not in ("fro", "rms"):
        raise ValueError(f"norm must be fro or rms, got {norm!r}")
    diff = (1.0 - mask) * (images - ref)
    root_n = math.sqrt(diff[0].numel())
    if eps > 0.0:
        e = eps * root_n
        value = (diff.flatten(1).square().sum(dim=1) + e * e).sqrt() - e
    else:
        value = diff.flatten(1).norm(dim=1)
    return value / root_n if norm == "rms" else value


def latent_region_constraint(pred: torch.Tensor, ref: torch.Tensor, latent_mask: torch.Tensor, image_numel: int,
                             norm: str = "fro") -> torch.Tensor:
    """‖(1 − M↓) ⊙ (a − b)‖ per sample ``(B,)`` on the latent grid (M↓: the backbone's ``latent_mask``): one step of
    ``objective.trajectory_weight``'s term (ours). In the image term's units: the rms over the latent elements, times
    sqrt(3·H·W) (``image_numel``) for ``norm="fro"``, so ρ = 1 weighs an rms latent change like the same rms pixel
    change."""
    diff = (1.0 - latent_mask) * (pred - ref)
    rms = diff.flatten(1).norm(dim=1) / math.sqrt(diff[0].numel())
    return rms * math.sqrt(image_numel) if norm == "fro" else rms


def fnf_loss(score: torch.Tensor, constraint: torch.Tensor | None, lam: float) -> torch.Tensor:
    """Mean over the batch of ``-r + λ · constraint``; ``constraint`` may be None when λ = 0."""
    loss = -score
    if lam != 0.0:
        loss = loss + lam * constraint
    return loss.mean()


def region_of(mask: torch.Tensor, inside: bool) -> torch.Tensor:
    hard = (mask > 0.5).float()
    return hard if inside else 1.0 - hard


def region_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, inside: bool, power: int = 2) -> torch.Tensor:
    """Mean squared (``power=2``) or absolute (``power=1``) difference over the region's pixels and
    channels, ``(B,)``; nan if the region is empty."""
    r = region_of(mask, inside)
    area = r.flatten(1).sum(1)
    err = ((a - b).abs() ** power * r).flatten(1).sum(1) / (3 * area).clamp_min(1)
    return torch.where(area > 0, err, torch.full_like(err, math.nan))


def outside_change(images: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """c = 255 · mean over the pixels and channels outside M of |Î − Î0|, per image ``(B,)``, in 8-bit grey levels:
    the measure of ``objective.budget`` (:mod:`.budget`), and eval's ``outside_mae`` × 255 (M binarised at 0.5).
    An image without an outside region changed nothing there: 0."""
    return torch.nan_to_num(255.0 * region_mse(images.detach(), ref, mask, inside=False, power=1), nan=0.0)
