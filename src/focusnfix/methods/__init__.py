"""Methods. Trainable ones expose ``loss(batch) -> (loss, logs)``; the trainer never branches on names."""
from .base import Batch, Reference
from .draft import DRaFT
from .fnf import FocusNFix
from .grpo import GRPO, RegionGRPO

METHODS = {"fnf": FocusNFix, "draft": DRaFT, "grpo": GRPO, "fnf-grpo": RegionGRPO}

__all__ = ["Batch", "Reference", "DRaFT", "FocusNFix", "GRPO", "RegionGRPO", "METHODS"]
