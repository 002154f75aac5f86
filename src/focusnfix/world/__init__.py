"""The built-in synthetic world: a procedural dataset with exact ground truth, a tiny trained
Stable-Diffusion-1.x-format pipeline, its flow-matching (SD3-format) sibling, reward models and
independent judges.

Heavy pieces are imported lazily::

    from focusnfix.world import pipeline_path, WorldArtifactReward, WorldSafetyReward
    from focusnfix.world import AlignmentOracle, DefectJudge
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_LAZY = {
    "WorldArtifactReward": "rewards",
    "WorldSafetyReward": "rewards",
    "AlignmentOracle": "judges",
    "DefectJudge": "judges",
    "load_pipeline": "model",
}


def pipeline_path() -> Path:
    """Folder of the committed ``StableDiffusionPipeline`` (load with ``local_files_only=True``)."""
    return WEIGHTS_DIR / "pipeline"


def flow_pipeline_path() -> Path:
    """Folder of the committed flow-matching ``StableDiffusion3Pipeline`` (load with ``local_files_only=True``,
    ``text_encoder_3=None, tokenizer_3=None``)."""
    return WEIGHTS_DIR / "flow_pipeline"


def weights_path(name: str) -> Path:
    """Committed safetensors file of a reward / judge, e.g. ``weights_path("artifact_reward")``."""
    return WEIGHTS_DIR / f"{name}.safetensors"


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["WEIGHTS_DIR", "pipeline_path", "flow_pipeline_path", "weights_path", *_LAZY]
