"""focusnfix: Focus-N-Fix region-aware reward fine-tuning of text-to-image diffusion models.

Public API::

    from focusnfix import load_config, train, load_backbone, generate
    cfg = load_config("configs/demo.yaml", ["train.steps=50"])
    run_dir = train(cfg)
"""
from .backbones import Conditioning, SDBackbone, load_backbone
from .config import Config, load_config
from .errors import ConfigError, FocusNFixError
from .rewards.masks import heatmap_to_mask, saliency_map
from .methods import DRaFT, FocusNFix
from .methods.objective import fnf_loss, region_constraint
from .rewards.registry import REWARDS, build_reward
from .rewards import ClassifierReward, ColorReward, Reward, RewardOutput
from .sampling import ddim_sample, generate
from .training.trainer import Trainer, train

__version__ = "0.1.0"

__all__ = [
    "Conditioning", "SDBackbone", "load_backbone", "Config", "load_config", "ConfigError", "FocusNFixError",
    "heatmap_to_mask", "saliency_map", "DRaFT", "FocusNFix", "fnf_loss", "region_constraint", "REWARDS",
    "build_reward", "ClassifierReward", "ColorReward", "Reward", "RewardOutput", "ddim_sample", "generate",
    "Trainer", "train",
]
