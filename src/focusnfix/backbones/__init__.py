"""Model families, one file each. A backbone loads a pipeline and exposes what the sampler and
methods need: ``encode``, ``initial_noise``, ``model_fn``, ``decode``."""
from .sd import Conditioning, SDBackbone, load_backbone
from .sdxl import SDXLBackbone

# diffusers pipeline class name -> backbone class
FAMILIES = {"StableDiffusionPipeline": SDBackbone, "StableDiffusionXLPipeline": SDXLBackbone}

__all__ = ["Conditioning", "SDBackbone", "SDXLBackbone", "FAMILIES", "load_backbone"]
