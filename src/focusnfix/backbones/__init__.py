"""Model families, one file each. A backbone loads a pipeline and exposes what the sampler and
methods need: ``encode``, ``initial_noise``, ``model_fn``, ``decode``."""
from .sd import Conditioning, SDBackbone, load_backbone
from .sdxl import SDXLBackbone
from .sd3 import SD3Backbone
from .flux import FluxBackbone

# diffusers pipeline class name -> backbone class
FAMILIES = {"StableDiffusionPipeline": SDBackbone, "StableDiffusionXLPipeline": SDXLBackbone,
            "StableDiffusion3Pipeline": SD3Backbone, "FluxPipeline": FluxBackbone}

__all__ = ["Conditioning", "SDBackbone", "SDXLBackbone", "SD3Backbone", "FluxBackbone", "FAMILIES", "load_backbone"]
