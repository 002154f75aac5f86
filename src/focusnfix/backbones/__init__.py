"""Model families, one file each. A backbone loads a pipeline and exposes what the sampler and
methods need: ``encode``, ``initial_noise``, ``model_fn``, ``decode``, and its step rules."""
from ..sampling import Conditioning  # re-exported: the backbones' encode() returns it
from .sd import SDBackbone
from .sdxl import SDXLBackbone
from .sd3 import SD3Backbone
from .flux import FluxBackbone
from .loading import BUILTIN_MODELS, FAMILIES, load_backbone

__all__ = ["Conditioning", "SDBackbone", "SDXLBackbone", "SD3Backbone", "FluxBackbone", "FAMILIES", "BUILTIN_MODELS",
           "load_backbone"]
