"""DRaFT-K (Clark et al., ICLR 2024): Focus-N-Fix with λ = 0, so no reference pass is needed."""
from __future__ import annotations

from .fnf import FocusNFix


class DRaFT(FocusNFix):
    """Plain reward fine-tuning: L = -r(Î, c). ``objective.lam`` is ignored (λ = 0)."""

    def __init__(self, backbone, reward, cfg):
        super().__init__(backbone, reward, cfg)
        self.lam = 0.0
