"""Model families. A backbone loads a pipeline and exposes what the sampler and methods need."""
from .sd import Conditioning, SDBackbone, load_backbone

__all__ = ["Conditioning", "SDBackbone", "load_backbone"]
