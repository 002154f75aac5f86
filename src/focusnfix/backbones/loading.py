"""Loading a diffusers pipeline as a backbone: a local folder, a hub id, or a built-in model name; the family
(``FAMILIES``) is read from the pipeline's ``model_index.json``."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch

from ..errors import FocusNFixError
from ..rewards.registry import import_path
from .flux import FluxBackbone
from .sd import SDBackbone
from .sd3 import SD3Backbone
from .sdxl import SDXLBackbone

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# diffusers pipeline class name -> backbone class
FAMILIES = {"StableDiffusionPipeline": SDBackbone, "StableDiffusionXLPipeline": SDXLBackbone,
            "StableDiffusion3Pipeline": SD3Backbone, "FluxPipeline": FluxBackbone}

# built-in model names -> ``package.module:attr`` of a function giving the pipeline (``tiny``: random, built in
# code) or the folder of a committed pipeline (the built-in world's trained model and its flow-matching sibling)
BUILTIN_MODELS = {
    "tiny": "focusnfix.backbones.tiny:build_tiny_pipeline",
    "world": "focusnfix.world:pipeline_path",
    "world-flow": "focusnfix.world:flow_pipeline_path",
}


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def load_backbone(path: str, dtype: str = "float32", revision: str | None = None, resolution: int | None = None,
                  device: str | torch.device | None = None, attention: str = "default",
                  height: int | None = None, width: int | None = None) -> SDBackbone:
    """Load an SD 1.x/2.x or SDXL pipeline from a local folder, a hub id, ``tiny`` (random, 32 px),
    ``world`` (the built-in world's trained 64 px model) or ``world-flow`` (its SD3-format flow model).

    Images are ``height`` x ``width`` px; each defaults to ``resolution``, else the model's own size.

    The family is read from the pipeline's ``model_index.json``. Weights must be safetensors
    (pickled ``.bin`` files are refused). Errors are one-line :class:`FocusNFixError` messages.
    """
    if path in BUILTIN_MODELS:
        made = import_path(BUILTIN_MODELS[path], "model")()
        pipe = _from_pretrained(str(made), DTYPES[dtype], None) if isinstance(made, (str, os.PathLike)) else made
    else:
        pipe = _from_pretrained(path, DTYPES[dtype], revision)
    backbone = FAMILIES[type(pipe).__name__](pipe, resolution=resolution, height=height, width=width)
    backbone.set_attention(attention)
    if device is not None:
        backbone.to(device)
    return backbone


def _pipeline_class(path: str, local: bool, revision: str | None):
    import diffusers

    try:
        name = diffusers.DiffusionPipeline.load_config(path, revision=revision, local_files_only=local)["_class_name"]
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise FocusNFixError(f"could not read the pipeline config of {path!r}: {first}") from None
    if name not in FAMILIES:
        raise FocusNFixError(f"model {path!r} is a {name}; supported pipelines: {', '.join(FAMILIES)}")
    return getattr(diffusers, name)


def _check_components(folder: Path) -> None:
    """Every component ``model_index.json`` lists (with a class) has its folder: a clear error instead
    of diffusers' "no file named config.json"."""
    import json

    index = json.loads((folder / "model_index.json").read_text())
    unused = {"safety_checker", "feature_extractor", "image_encoder"}  # not loaded (safety checker passed as None)
    missing = [name for name, value in index.items() if not name.startswith("_") and name not in unused
               and isinstance(value, list) and value[0] is not None and not (folder / name).is_dir()]
    if missing:
        raise FocusNFixError(f"model folder {str(folder)!r} lacks {', '.join(m + '/' for m in missing)} (listed in its "
                             "model_index.json); copy or download the complete pipeline")


def _absent_components(folder: Path, cls) -> dict:
    """Required components a local folder lists as null (an SD3 folder saved without T5: ``text_encoder_3``,
    ``tokenizer_3``), passed as None, diffusers' documented way to load a pipeline without them."""
    import inspect
    import json

    index = json.loads((folder / "model_index.json").read_text())
    params = inspect.signature(cls.__init__).parameters
    return {name: None for name, value in index.items() if name in params and name not in cls._optional_components
            and isinstance(value, list) and value[0] is None}


def _from_pretrained(path: str, dtype: torch.dtype, revision: str | None):
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise FocusNFixError(f"model.path {path!r} is not a diffusers pipeline folder (no model_index.json)")
    elif not _HUB_ID.match(path):
        raise FocusNFixError(f"model.path {path!r} does not exist; give a diffusers folder or a hub id like org/name")
    elif os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise FocusNFixError(
            f"model.path {path!r} is not a local folder and the hub is offline (HF_HUB_OFFLINE is set); "
            "download it first or give a local folder"
        )
    source = str(local) if local.exists() else path
    cls = _pipeline_class(source, local.exists(), revision)
    if local.exists():
        _check_components(local)
    try:
        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype -> dtype; keep both working
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} \
                if cls.__name__ == "StableDiffusionPipeline" else {}
            if local.exists():
                extra = {**_absent_components(local, cls), **extra}
            return cls.from_pretrained(source, torch_dtype=dtype, revision=revision, use_safetensors=True,
                                       local_files_only=local.exists(), **extra)
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FocusNFixError(f"could not load model {path!r}: {first}") from e
