"""DRaFT-K (Clark et al., ICLR 2024): Focus-N-Fix with λ = 0, so no reference pass is needed."""
from __future__ import annotations

from .fnf import FocusNFix


class DRaFT(FocusNFix):
    """Plain reward fine-tuning: L = -r(Î, c). ``objective.lam`` and ``objective.budget`` are ignored (λ = 0)."""

    constrained = False

    @staticmethod
    def weight(cfg) -> float:
        """λ = 0: no region constraint, so no reference pass (and no reference cache)."""
        return 0.0
