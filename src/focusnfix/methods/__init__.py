"""Methods. Trainable ones expose ``loss(batch) -> (loss, logs)``; the trainer never branches on names."""
from .base import Batch, Reference
from .draft import DRaFT
from .fnf import FocusNFix

METHODS = {"fnf": FocusNFix, "draft": DRaFT}

__all__ = ["Batch", "Reference", "DRaFT", "FocusNFix", "METHODS"]
