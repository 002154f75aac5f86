"""A run folder's ``config.yaml``: the resolved config, written atomically."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..config import Config, to_dict
from .checkpoint import atomic_write_text


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (a crash leaves the old file or the new one)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
