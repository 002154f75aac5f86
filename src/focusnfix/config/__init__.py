"""Configuration: nested dataclasses, loaded from YAML plus checked dotted overrides.

``load_config("cfg.yaml", ["train.lr=1e-4", "lora.rank=8"])`` returns a validated :class:`Config`.
Unknown keys and wrong types raise :class:`ConfigError` listing the valid keys.

The schema (sections, defaults, help, limits) is :mod:`.schema`, the generic field checks :mod:`.fields`,
reading YAML and overrides :mod:`.load`, names of code and Hub repos :mod:`.names`. This layer imports
nothing of focusnfix but :mod:`focusnfix.errors`.
"""
from __future__ import annotations

from .load import (MAX_CONFIG_BYTES, PACKAGED_CONFIGS, apply_override, check_size, field_help, field_limits, from_dict,
                   load_config)
from .names import check_repo_id, import_path, resolve
from .schema import (MAX_PROMPT_CHARS, MAX_SEED, MAX_SIDE, Config, DataConfig, GRPOConfig, LoRAConfig, MaskConfig,
                     ModelConfig, ObjectiveConfig, RewardConfig, SamplerConfig, TrainConfig, to_dict)

__all__ = [
    "Config", "ModelConfig", "LoRAConfig", "SamplerConfig", "RewardConfig", "MaskConfig", "ObjectiveConfig",
    "GRPOConfig", "DataConfig", "TrainConfig", "load_config", "from_dict", "to_dict", "apply_override", "field_help",
    "field_limits", "check_size", "check_repo_id", "import_path", "resolve", "PACKAGED_CONFIGS", "MAX_CONFIG_BYTES",
    "MAX_SIDE", "MAX_SEED", "MAX_PROMPT_CHARS",
]
