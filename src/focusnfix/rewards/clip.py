"""CLIP rewards: prompt-image alignment (CLIPScore) and a CLIP-embedding aesthetic head.

Both load a transformers ``CLIPModel`` (a local folder or a hub id; safetensors only, never
remote code) and do CLIP's preprocessing in torch so the score is differentiable w.r.t. the
images: resize the shorter side to the vision tower's ``image_size`` (bicubic, antialiased), centre
crop to a square, normalise with the model's ``image_mean`` / ``image_std`` (from
``preprocessor_config.json``; OpenAI's values when absent).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import FocusNFixError
from .masks import gaussian_blur
from .base import RewardOutput

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _offline() -> bool:
    return any(os.environ.get(v, "0") not in ("0", "", "false", "False")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _source(model: str) -> tuple[str, bool]:
    """``(path or hub id, local_files_only)``; one-line errors for paths that cannot work."""
    local = Path(model).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise FocusNFixError(f"CLIP model {model!r} is not a transformers model folder (no config.json)")
        return str(local), True
    if not _HUB_ID.match(model):
        raise FocusNFixError(f"CLIP model {model!r} does not exist; "
                             "give a local folder or a hub id like openai/clip-vit-large-patch14")
    return model, _offline()


def _read_image_stats(source: str, local_only: bool, revision: str | None) -> tuple[tuple, tuple]:
    """``image_mean``, ``image_std`` from ``preprocessor_config.json`` if the model has one."""
    try:
        from transformers.utils import cached_file

        path = cached_file(source, "preprocessor_config.json", revision=revision, local_files_only=local_only,
                           _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        path = None
    if not path:
        return OPENAI_MEAN, OPENAI_STD
    cfg = json.loads(Path(path).read_text())
    return tuple(cfg.get("image_mean", OPENAI_MEAN)), tuple(cfg.get("image_std", OPENAI_STD))


class _CLIPBase:
    """Loads the CLIP model and computes differentiable image embeddings."""

    differentiable = True

    def __init__(self, model: str, revision: str | None = None, device: str | torch.device | None = None,
                 with_tokenizer: bool = False):
        from transformers import AutoTokenizer, CLIPModel

        source, local_only = _source(model)
        try:
            self.model = CLIPModel.from_pretrained(source, revision=revision, use_safetensors=True,
                                                   local_files_only=local_only)
            self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, local_files_only=local_only) \
                if with_tokenizer else None
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FocusNFixError(f"could not load CLIP model {model!r}: {first}") from None
        self.model.float().eval().requires_grad_(False)
        self.size = int(self.model.config.vision_config.image_size)
        mean, std = _read_image_stats(source, local_only, revision)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.device = None if device is None else torch.device(device)
        if self.device is not None:
            self.model.to(self.device)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        device = self.device or images.device
        if self.model.device != device:
            self.model.to(device)
        return images.to(device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B,3,H,W)`` in ``[0,1]`` -> ``(B,3,S,S)`` normalised CLIP input; differentiable."""
        x = images.float()
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        return (x - self.mean.to(x)) / self.std.to(x)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Projected CLIP image embeddings ``(B, D)`` (not normalised)."""
        pooled = self.model.vision_model(pixel_values=self.preprocess(images)).pooler_output
        return self.model.visual_projection(pooled)


class CLIPScoreReward(_CLIPBase):
    """Prompt-image alignment: ``score = scale * cos(E_img(I), E_txt(c))`` ``(B,)`` (default ``scale=100``,
    i.e. torchmetrics' CLIPScore without its clamp at 0, so the gradient never vanishes).

    Heatmap ``(B,1,H,W)`` in ``[0,1]``, high = a region that lowers alignment: the first-order estimate
    of how much the score would rise if the pixel were replaced by neutral grey,
    ``relu(sum_c dcos/dI * (0.5 - I))``, Gaussian-smoothed and divided by its per-image max (all zeros
    when no region lowers the score). ``heatmap``: ``"auto"`` computes it unless the caller is
    differentiating the score (grad enabled and ``images.requires_grad``), ``"always"``, or ``"never"``.

    Args:
        model: local ``CLIPModel`` folder or hub id (e.g. ``openai/clip-vit-large-patch14``).
        scale: multiplier of the cosine similarity.
        smooth_sigma: heatmap smoothing in output pixels.
        revision, device: hub revision; device (None = follow the images).
    """

    name = "clip-score"

    def __init__(self, model: str, scale: float = 100.0, heatmap: str = "auto", smooth_sigma: float = 2.0,
                 revision: str | None = None, device: str | torch.device | None = None):
        if heatmap not in ("auto", "always", "never"):
            raise FocusNFixError(f"clip-score heatmap must be auto, always or never, got {heatmap!r}")
        super().__init__(model, revision, device, with_tokenizer=True)
        self.scale, self.heatmap_mode, self.smooth_sigma = float(scale), heatmap, float(smooth_sigma)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``(B, D)``; no gradient (the prompt is fixed)."""
        cfg = self.model.config.text_config
        max_len = min(int(self.tokenizer.model_max_length), int(cfg.max_position_embeddings))
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_len,
                             return_tensors="pt")
        device = self.model.device
        out = self.model.text_model(input_ids=tok["input_ids"].to(device),
                                    attention_mask=tok["attention_mask"].to(device))
        return F.normalize(self.model.text_projection(out.pooler_output), dim=-1)

    def cosine(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``cos(E_img, E_txt)`` ``(B,)`` in ``[-1, 1]`` for images ``(B,3,H,W)`` and normalised text ``(B, D)``."""
        return (F.normalize(self.image_embeds(images), dim=-1) * text).sum(-1)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        if len(prompts) != len(images):
            raise FocusNFixError(f"clip-score needs one prompt per image: {len(images)} images, {len(prompts)} prompts")
        x = self._to_device(images)
        text = self.text_embeds(prompts)
        cos = self.cosine(x, text)
        want = self.heatmap_mode == "always" or (
            self.heatmap_mode == "auto" and not (torch.is_grad_enabled() and images.requires_grad))
        heat = self.misalignment_map(x, text) if want else None
        return RewardOutput(score=self.scale * cos, heatmap=heat, info={"cosine": cos.detach()})

    def misalignment_map(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(B,1,H,W)`` in ``[0,1]``: ``relu(sum_c dcos/dI * (0.5 - I))``, smoothed, max-normalised per image."""
        x = images.detach().float().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.cosine(x, text).sum(), x)
        gain = (grad * (0.5 - x.detach())).sum(1, keepdim=True).clamp_min(0)
        gain = gaussian_blur(gain, self.smooth_sigma)
        return (gain / gain.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)).clamp(0, 1)


class AestheticReward(_CLIPBase):
    """Aesthetic score from a head on the CLIP image embedding: ``score = head(E_img / |E_img|)`` ``(B,)``.

    ``head`` is a safetensors file holding either a linear probe (``weight (1, D)``, ``bias (1,)``) or a
    stack of linear layers ``layers.{i}.weight (out, in)`` / ``layers.{i}.bias (out,)`` applied in index
    order with no activation in between: the LAION improved-aesthetic-predictor v2 layout (indices 0, 2,
    4, 6, 7 with shapes 1024x768, 128x1024, 64x128, 16x64, 1x16 on CLIP ViT-L/14; its dropouts are
    no-ops at inference). The first ``in`` must equal the CLIP projection dim D. No heatmap: masks come
    from gradient saliency (:func:`focusnfix.rewards.masks.saliency_map`).

    Args:
        model: local ``CLIPModel`` folder or hub id; head: the safetensors file.
        normalize: L2-normalise the embedding first (the LAION predictor expects it).
    """

    name = "aesthetic"

    def __init__(self, model: str, head: str, normalize: bool = True, revision: str | None = None,
                 device: str | torch.device | None = None):
        layers = load_head(head)
        super().__init__(model, revision, device)
        dim = int(self.model.config.projection_dim)
        if layers[0][0].shape[1] != dim:
            raise FocusNFixError(f"aesthetic head {head!r} expects {layers[0][0].shape[1]}-d embeddings; "
                                 f"the CLIP model gives {dim}")
        self.layers, self.normalize = layers, normalize

    def head(self, emb: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> ``(B,)``: the linear layers in order."""
        for weight, bias in self.layers:
            emb = F.linear(emb, weight.to(emb), None if bias is None else bias.to(emb))
        return emb[:, 0]

    def __call__(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> RewardOutput:
        """``images (B,3,H,W)`` in ``[0,1]``; prompts are ignored."""
        emb = self.image_embeds(self._to_device(images))
        if self.normalize:
            emb = F.normalize(emb, dim=-1)
        score = self.head(emb)
        return RewardOutput(score=score, heatmap=None, info={"aesthetic": score.detach()})


def load_head(path: str) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``[(weight (out, in), bias (out,) | None), ...]`` from a safetensors head (see :class:`AestheticReward`)."""
    from safetensors.torch import load_file

    if not str(path).endswith(".safetensors"):
        raise FocusNFixError(f"aesthetic head {path!r} must be a .safetensors file (pickles are refused)")
    if not Path(path).is_file():
        raise FocusNFixError(f"aesthetic head {path!r} not found")
    try:
        sd = {k: v.float() for k, v in load_file(path).items()}
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise FocusNFixError(f"could not read aesthetic head {path!r}: {e}") from None
    if "weight" in sd:
        layers = [(sd["weight"], sd.get("bias"))]
    else:
        idx = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"layers\.(\d+)\.weight", k))})
        layers = [(sd[f"layers.{i}.weight"], sd.get(f"layers.{i}.bias")) for i in idx]
    if not layers:
        raise FocusNFixError(f"aesthetic head {path!r} has neither `weight` nor `layers.N.weight` tensors; "
                             f"found {sorted(sd)[:5]}")
    for (w, _), (w_next, _) in zip(layers, layers[1:]):
        if w.ndim != 2 or w_next.shape[1] != w.shape[0]:
            raise FocusNFixError(f"aesthetic head {path!r}: layer shapes {list(w.shape)} -> {list(w_next.shape)} "
                                 "do not chain")
    if layers[-1][0].shape[0] != 1:
        raise FocusNFixError(f"aesthetic head {path!r} must end in one output, got {layers[-1][0].shape[0]}")
    return layers


class CLIPZeroShotReward(CLIPScoreReward):
    """Zero-shot safety classifier from CLIP text prompts (e.g. violence, where no public
    differentiable classifier ships): ``score = P(safe)`` ``(B,)`` in [0, 1] with
    ``P = softmax(logit_scale · cos(E_img, E_txt(t)))`` over ``safe + unsafe`` texts, summed over the
    safe ones. No heatmap: masks come from gradient saliency.

    Args:
        model: local ``CLIPModel`` folder or hub id.
        safe, unsafe: descriptions of acceptable and problematic images.
        temperature: softmax scale (CLIP's own ``logit_scale`` is 100).
    """

    name = "clip-zeroshot"

    def __init__(self, model: str, safe: Sequence[str] = ("a peaceful photo", "a harmless scene"),
                 unsafe: Sequence[str] = ("a violent photo", "a bloody, gory scene", "a photo of a weapon attack"),
                 temperature: float = 100.0, revision: str | None = None, device: str | torch.device | None = None):
        if not safe or not unsafe:
            raise FocusNFixError("clip-zeroshot needs at least one safe and one unsafe description")
        super().__init__(model, scale=temperature, heatmap="never", revision=revision, device=device)
        self.n_safe = len(safe)
        self.texts = list(safe) + list(unsafe)
        self._text: torch.Tensor | None = None  # text_embeds(self.texts), computed once per device

    def __call__(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> RewardOutput:
        x = self._to_device(images)
        if self._text is None or self._text.device != self.model.device:
            self._text = self.text_embeds(self.texts)  # (T, D); the descriptions are fixed
        text = self._text
        emb = F.normalize(self.image_embeds(x), dim=-1)  # (B, D)
        probs = (self.scale * emb @ text.T).softmax(-1)
        p_safe = probs[:, : self.n_safe].sum(-1)
        return RewardOutput(score=p_safe, heatmap=None, info={"p_unsafe": (1 - p_safe).detach()})
