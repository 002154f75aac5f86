"""Text conditioning c as the sampler passes it to a backbone's model function, and row selection on it.

A backbone builds :class:`Conditioning` (``encode``); the sampler, the methods and the reference cache only
carry it around and pick trajectories out of it (:func:`conditioning_rows`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditioning:
    """Text conditioning c. ``embeds`` is ``(2B, L, D)`` = [negative; positive] under CFG, else ``(B, L, D)``.

    ``added`` holds extra UNet inputs in the same batch order (SDXL: pooled ``text_embeds`` and
    ``time_ids``), or None.
    """

    embeds: torch.Tensor
    guidance_scale: float
    added: dict[str, torch.Tensor] | None = None

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0


SHARED_CONDITIONING = ("txt_ids",)  # inputs of ``Conditioning.added`` that are not per row (FLUX's text position ids)


def conditioning_rows(cond: Conditioning, index: list[int]) -> Conditioning:
    """The conditioning of trajectories ``index`` of ``cond`` (repeats allowed), without encoding again:
    under CFG both halves [negative; positive] are taken, so the result is again [negative; positive]."""
    rows = cond.embeds.shape[0]
    n = rows // 2 if cond.cfg else rows
    picked = list(index) + ([i + n for i in index] if cond.cfg else [])
    where = torch.tensor(picked, device=cond.embeds.device)

    def take(key: str, value):
        if key in SHARED_CONDITIONING or not torch.is_tensor(value) or value.ndim == 0 or value.shape[0] != rows:
            return value
        return value.index_select(0, where.to(value.device))

    added = {k: take(k, v) for k, v in cond.added.items()} if cond.added else cond.added
    return Conditioning(embeds=take("embeds", cond.embeds), guidance_scale=cond.guidance_scale, added=added)
