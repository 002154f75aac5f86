"""focusnfix: Focus-N-Fix region-aware reward fine-tuning of text-to-image diffusion models.

Public API::

    from focusnfix import load_config, train, load_backbone, generate
    cfg = load_config("configs/demo.yaml", ["train.steps=50"])
    run_dir = train(cfg)
"""
import importlib.abc
import importlib.util
import sys
import warnings

from .backbones import Conditioning, SDBackbone, load_backbone
from .config import Config, load_config
from .errors import ConfigError, FocusNFixError
from .rewards.masks import heatmap_to_mask, saliency_map
from .methods import DRaFT, FocusNFix
from .methods.objective import fnf_loss, region_constraint
from .rewards.registry import REWARDS, build_reward
from .rewards import ClassifierReward, ColorReward, Reward, RewardOutput
from .sampling import generate, sample
from .training.trainer import Trainer, train

__version__ = "0.1.0"

__all__ = [
    "Conditioning", "SDBackbone", "load_backbone", "Config", "load_config", "ConfigError", "FocusNFixError",
    "heatmap_to_mask", "saliency_map", "DRaFT", "FocusNFix", "fnf_loss", "region_constraint", "REWARDS",
    "build_reward", "ClassifierReward", "ColorReward", "Reward", "RewardOutput", "sample", "generate",
    "Trainer", "train",
]


def __getattr__(name: str):
    if name == "ddim_sample":  # the name from when DDIM was the only step rule; goes in the next release
        warnings.warn("focusnfix.ddim_sample is deprecated; use focusnfix.sample", DeprecationWarning, stacklevel=2)
        return sample
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- module paths before the layered layout (docs/architecture.md), importable for one release ----------------
_MOVED = {
    "demo": "cli.demo", "prompt_sets": "prompts.sets", "objective": "methods.objective", "cache": "training.cache",
    "trainer": "training.trainer", "tracking": "training.tracking", "sharding": "backbones.sharding",
    "checkpoint": "runs.checkpoint", "resume": "runs.resume", "locking": "runs.locking",
    "metrics_log": "runs.metrics_log", "modelcard": "runs.modelcard", "hub": "runs.hub", "lora": "backbones.lora",
    "compile": "backbones.compile", "tiny": "backbones.tiny", "tiny_flow": "backbones.tiny_flow",
    "registry": "rewards.registry", "masks": "rewards.masks",
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import focusnfix.trainer`` (an old path) gives the names of its new module with a DeprecationWarning;
    ``python -m focusnfix.demo`` runs the new module."""

    def find_spec(self, name, path=None, target=None):
        old = name.removeprefix(f"{__name__}.")
        return importlib.util.spec_from_loader(name, self) if old in _MOVED and old != name else None

    def _new(self, name: str) -> str:
        return f"{__name__}.{_MOVED[name.removeprefix(f'{__name__}.')]}"

    def exec_module(self, module) -> None:
        new = self._new(module.__name__)
        warnings.warn(f"{module.__name__} moved to {new}; the old path goes in the next release", DeprecationWarning,
                      stacklevel=2)
        module.__dict__.update({k: v for k, v in vars(importlib.import_module(new)).items() if not k.startswith("__")})

    def get_code(self, name: str):
        return compile(f"import runpy\nrunpy.run_module({self._new(name)!r}, run_name='__main__', alter_sys=True)",
                       f"<{name}>", "exec")


sys.meta_path.append(_MovedModule())
