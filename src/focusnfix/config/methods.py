"""The catalogue of training methods: one entry per config ``method`` name, the one place that lists them.

Each entry names its class as a ``package.module:attr`` string (imported only when a run builds it, so
this low layer imports no method), the config sections it reads besides ``model``, ``lora``, ``reward``,
``data`` and ``train``, the phrase of the ``method`` key's help, and its model card's name, Hub tag and
sentence. A new method: its module in ``methods/``, an entry here, and its config section (if any) in the
schema. The class is built as ``cls(backbone, reward, cfg, context)`` (:class:`focusnfix.methods.base.Method`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodEntry:
    """One training method: ``path`` of its class, the config ``sections`` it reads, the ``help`` phrase of
    the ``method`` key, and the model card's ``title``, Hub ``tag`` and ``sentence``."""

    path: str
    sections: tuple[str, ...]
    help: str
    title: str
    tag: str
    sentence: str


METHODS: dict[str, MethodEntry] = {
    "fnf": MethodEntry(
        "focusnfix.methods.fnf:FocusNFix", ("sampler", "mask", "objective"), "fnf (Focus-N-Fix)",
        "Focus-N-Fix", "focus-n-fix",
        "region-aware reward fine-tuning: the reward r(Î, c) rises inside the problem mask M(Î0) of the frozen model's "
        "image Î0, while λ·‖(1 − M(Î0)) ⊙ (Î − Î0)‖_F keeps the rest of the image as the base model drew it (gradient "
        "through the last K denoising steps, DRaFT-K)."),
    "draft": MethodEntry(
        "focusnfix.methods.draft:DRaFT", ("sampler",), "draft (lambda = 0, no reference pass)",
        "DRaFT", "draft",
        "direct reward fine-tuning (DRaFT-K): the reward's gradient flows through the last K denoising steps and the "
        "VAE decoder; no region constraint (Focus-N-Fix with λ = 0)."),
    "grpo": MethodEntry(
        "focusnfix.methods.grpo:GRPO", ("sampler", "grpo"), "grpo (policy gradient, any reward)",
        "GRPO", "grpo",
        "policy-gradient reward fine-tuning (GRPO): advantages normalised within groups of samples of one prompt, "
        "clipped importance ratios; the reward needs no gradient."),
    "fnf-grpo": MethodEntry(
        "focusnfix.methods.grpo:RegionGRPO", ("sampler", "mask", "grpo"),
        "fnf-grpo (region-aware GRPO: policy gradient inside the mask, KL to the frozen model outside, weighted by "
        "grpo.kl_weight)",
        "region-aware GRPO", "focus-n-fix",
        "region-aware GRPO: the policy gradient acts inside the problem mask M(Î0), a KL term to the frozen model "
        "outside it, weighted by λ."),
}


def method_names() -> str:
    """``fnf, draft, grpo or fnf-grpo``: the catalogue's names for messages."""
    names = list(METHODS)
    return ", ".join(names[:-1]) + " or " + names[-1]


def method_help() -> str:
    """The help of the config key ``method``: each name with its phrase."""
    phrases = [entry.help for entry in METHODS.values()]
    return ", ".join(phrases[:-1]) + " or " + phrases[-1] + "."
