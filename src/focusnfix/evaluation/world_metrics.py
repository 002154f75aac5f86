"""The built-in world's independent judges as eval metrics (never used as training rewards):

* ``alignment``: 1 if the alignment oracle reads every attribute the caption names, else 0
  (its mean is the oracle accuracy, the analog of the paper's VNLI alignment score);
  ``alignment_fraction``: the share of named attributes read correctly.
* ``defect_artifact`` / ``defect_unwanted``: 1 if the defect judge finds the defect (p > 0.5), so
  their means are defect rates.
"""
from __future__ import annotations

from pathlib import Path

import torch


def is_world(model_path: str) -> bool:
    """The built-in world: ``world``, ``world-flow`` or the folder of either committed pipeline."""
    if model_path in ("world", "world-flow"):
        return True
    try:
        from ..world import flow_pipeline_path, pipeline_path
    except ImportError:
        return False
    return Path(model_path).expanduser().resolve() in (pipeline_path().resolve(), flow_pipeline_path().resolve())


def world_metrics():
    """An extra-metric function ``fn(images, prompts) -> {name: (B,)}`` for :class:`Evaluation`."""
    from ..world import AlignmentOracle, DefectJudge

    oracle, judge = AlignmentOracle(), DefectJudge()

    def fn(images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        aligned = oracle(images, prompts)
        defects = judge(images)
        return {"alignment": aligned.all_correct, "alignment_fraction": aligned.fraction,
                "defect_artifact": (defects["artifact"] > 0.5).float(),
                "defect_unwanted": (defects["unwanted"] > 0.5).float()}

    return fn


def eval_metrics_for(model_path: str) -> list:
    """The world's judges when ``model_path`` is the built-in world, else nothing."""
    return [world_metrics()] if is_world(model_path) else []
