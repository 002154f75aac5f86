"""Focus-N-Fix (Xing, Saha, He et al., CVPR 2025): reward fine-tuning confined to problem regions.

For prompt c and noise x_T:  Î0 = frozen model (adapters off, no grad), M = mask(Î0),
Î = fine-tuned model with gradient through the last K steps (DRaFT-K), and
L = -r(Î, c) + λ ‖(1 - M) ⊙ (Î - Î0)‖  (see :mod:`focusnfix.objective`).
"""
from __future__ import annotations

import torch

from ..config import Config
from ..lora import adapters_disabled
from ..rewards.compose import mask_from
from ..objective import fnf_loss, region_constraint
from ..sampling import ddim_sample
from .base import Batch, Reference


class FocusNFix:
    """Region-constrained DRaFT-K. ``lam`` is λ; the trainer calls :meth:`loss` per micro-batch."""

    def __init__(self, backbone, reward, cfg: Config):
        self.backbone, self.reward, self.cfg = backbone, reward, cfg
        self.lam = cfg.objective.lam
        self.cache = None  # a focusnfix.cache.ReferenceCache, attached by the trainer
        self.lockstep = None  # sharded training: bool -> "true on any rank?" (a collective), set by the trainer

    @property
    def needs_reference(self) -> bool:
        return self.lam > 0

    # -- M(Î0) -----------------------------------------------------------------------------
    def mask(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M(Î0), map)``: a composite reward makes its own (per-term settings), else the ``mask`` section."""
        if hasattr(self.reward, "problem_mask"):
            return self.reward.problem_mask(images, prompts)
        return mask_from(self.reward, images, prompts, self.cfg.mask)

    # -- Î0 -----------------------------------------------------------------------------------
    def reference(self, prompts: list[str], seeds: list[int]) -> Reference:
        """Î0 and M(Î0) from the frozen model θ0 (same UNet, adapters disabled), no gradient.

        With a :class:`~focusnfix.cache.ReferenceCache` attached (``self.cache``), pairs seen before
        are read from it and only the missing ones are computed, as one batch."""
        entries = [self.cache.get(p, s) if self.cache is not None else None for p, s in zip(prompts, seeds)]
        missing = [i for i, e in enumerate(entries) if e is None]
        if self.lockstep is not None and self.lockstep(bool(missing)) and not missing:
            missing = list(range(len(entries)))  # FSDP: run the reference pass on every rank or none (equal to the cached one)
        if missing:
            fresh = self._compute_reference([prompts[i] for i in missing], [seeds[i] for i in missing])
            for j, i in enumerate(missing):
                entries[i] = {"images": fresh.images[j], "mask": fresh.mask[j], "heatmap": fresh.heatmap[j]}
                if self.cache is not None:
                    self.cache.put(prompts[i], seeds[i], entries[i])
        device = self.backbone.device
        stack = lambda key: torch.stack([e[key] for e in entries]).to(device)  # noqa: E731
        return Reference(images=stack("images"), mask=stack("mask"), heatmap=stack("heatmap"))

    def _compute_reference(self, prompts: list[str], seeds: list[int]) -> Reference:
        s = self.cfg.sampler
        with torch.no_grad(), adapters_disabled(self.backbone.unet):
            cond = self.backbone.encode(prompts, s.negative_prompt, s.guidance_scale)
            latents = ddim_sample(self.backbone, cond, self.backbone.initial_noise(seeds), s.steps)
            images = self.backbone.decode(latents)
        mask, heat = self.mask(images, prompts)
        return Reference(images=images, mask=mask, heatmap=heat)

    # -- Î with gradient through the last K steps ----------------------------------------------
    def trained_images(self, prompts: list[str], seeds: list[int], k: int) -> torch.Tensor:
        s = self.cfg.sampler
        cond = self.backbone.encode(prompts, s.negative_prompt, s.guidance_scale)
        latents = ddim_sample(self.backbone, cond, self.backbone.initial_noise(seeds), s.steps, k=k,
                              grad_checkpointing=s.grad_checkpointing)
        return self.backbone.decode(latents, grad_checkpointing=s.vae_checkpointing)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """L = mean over the batch of -r(Î, c) + λ ‖(1 - M(Î0)) ⊙ (Î - Î0)‖."""
        ref = self.reference(batch.prompts, batch.seeds) if self.needs_reference else None
        images = self.trained_images(batch.prompts, batch.seeds, batch.k)
        score = self.reward(images, batch.prompts).score
        constraint = None
        if ref is not None:
            constraint = region_constraint(images, ref.images, ref.mask, self.cfg.objective.norm)
        loss = fnf_loss(score, constraint, self.lam)
        logs = {"loss": loss.item(), "reward": score.mean().item(), "k": batch.k}
        if ref is not None:
            logs["constraint"] = constraint.mean().item()
            logs["mask_frac"] = ref.mask.mean().item()
        return loss, logs

    @torch.no_grad()
    def preview(self, prompts: list[str], seeds: list[int]) -> dict[str, torch.Tensor]:
        """Î0, M(Î0) and Î for the sample grids (no gradient)."""
        ref = self.reference(prompts, seeds)
        images = self.trained_images(prompts, seeds, k=0)
        return {"reference": ref.images, "mask": ref.mask, "images": images}
