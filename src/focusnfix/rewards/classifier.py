"""Generic reward around any torch image classifier (e.g. a safety / NSFW classifier).

``score = 1 - p(bad_class)``: higher is better. Preprocessing (resize, normalise) is done in torch
so the score is differentiable w.r.t. the images. A heatmap is returned only if the model returns
``(logits, heatmap)``; otherwise masks come from gradient saliency (see :mod:`focusnfix.rewards.masks`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import FocusNFixError
from .base import RewardOutput


class ClassifierReward:
    """Wrap ``model(x) -> logits (B, C)`` or ``(logits, heatmap (B,1,h,w))``.

    Args:
        model: an ``nn.Module`` or an import path ``package.module:factory`` called with no args.
        bad_class: index of the class to suppress.
        input_size: side the images are resized to before the model (None = keep).
        mean, std: per-channel normalisation applied after resizing.
        weights: optional safetensors file loaded into the model (never pickles).
        multilabel: use a sigmoid on the bad logit instead of a softmax over classes.
    """

    differentiable = True

    def __init__(self, model: torch.nn.Module | str | Callable[[], torch.nn.Module], bad_class: int = 1,
                 input_size: int | None = None, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0), weights: str | None = None,
                 multilabel: bool = False, name: str = "classifier"):
        if isinstance(model, str):
            from .registry import check_module_factory, import_path

            path, model = model, import_path(model, "classifier model")
            check_module_factory(model, path, "classifier model")
        if not isinstance(model, torch.nn.Module) and callable(model):
            model = model()
        if not isinstance(model, torch.nn.Module):
            raise FocusNFixError(f"classifier reward needs a torch.nn.Module, got {type(model).__name__}")
        if weights is not None:
            _load_safetensors(model, weights)
        self.model = model.eval().requires_grad_(False)
        self.bad_class, self.input_size, self.multilabel, self.name = bad_class, input_size, multilabel, name
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return (x - self.mean.to(x)) / self.std.to(x)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> RewardOutput:
        weight = next(self.model.parameters(), None)
        # follow the images (eval and trainer move images, not rewards)
        if weight is not None and weight.device != images.device:
            self.model.to(images.device)
        out = self.model(self.preprocess(images))
        logits, heat = (out if isinstance(out, (tuple, list)) else (out, None))
        if self.multilabel:
            p_bad = torch.sigmoid(logits[:, self.bad_class])
        else:
            p_bad = logits.float().softmax(-1)[:, self.bad_class]
        if heat is not None:
            heat = F.interpolate(heat.float(), size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
        return RewardOutput(score=1.0 - p_bad, heatmap=heat, info={"p_bad": p_bad.detach()})


def _load_safetensors(model: torch.nn.Module, path: str) -> None:
    from safetensors.torch import load_file

    if not str(path).endswith(".safetensors"):
        raise FocusNFixError(f"classifier weights {path!r} must be a .safetensors file (pickles are refused)")
    if not Path(path).is_file():
        raise FocusNFixError(f"classifier weights {path!r} not found")
    try:
        missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise FocusNFixError(f"could not read classifier weights {path!r}: {e}") from None
    if missing or unexpected:
        raise FocusNFixError(f"classifier weights {path!r} do not fit the model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
