"""Methods. Trainable ones follow :class:`~focusnfix.methods.base.Method` (``loss(batch) -> (loss, logs)``,
``preview``); the trainer never branches on names: it builds them from :mod:`focusnfix.config.methods`."""
from ..config.methods import METHODS as CATALOGUE
from ..config.names import import_path
from .base import Batch, Method, MethodContext, Reference
from .draft import DRaFT
from .fnf import FocusNFix
from .grpo import GRPO, RegionGRPO

METHODS = {name: import_path(entry.path, "method") for name, entry in CATALOGUE.items()}  # name -> class

__all__ = ["Batch", "Method", "MethodContext", "Reference", "DRaFT", "FocusNFix", "GRPO", "RegionGRPO", "METHODS"]
