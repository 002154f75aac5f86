"""The rows of a run's model card that describe its training: method settings (λ or the collateral budget, the
mask M(Î0), K or GRPO's settings), the reward (a ``sum``'s terms and each term's own mask) and the sampler."""
from __future__ import annotations

from ..config import MaskConfig
from ..config.methods import METHODS as CATALOGUE

MASK_SOURCES = {"auto": "the reward's heatmap, else gradient saliency", "heatmap": "the reward's heatmap",
                "saliency": "gradient saliency of the reward",
                "none": "none (M = 0: the constraint covers the whole image)"}
FLOW = ("StableDiffusion3", "Flux")  # pipeline class prefixes of the flow-matching families (bfloat16, Euler)


def method_rows(cfg: dict) -> list[tuple[str, str]]:
    s, g, o, mask = (cfg.get(k, {}) for k in ("sampler", "grpo", "objective", "mask"))
    entry = CATALOGUE.get(cfg.get("method"))
    sections = entry.sections if entry is not None else ()  # what the method reads: which rows apply
    k = f"{s.get('k')}" + (f" to {s['k_max']} (drawn per trajectory)" if s.get("k_max") else "")
    rows = []
    if "mask" in sections:  # fnf: objective.lam; fnf-grpo: grpo.kl_weight (unset: objective.lam, its old key)
        lam = o.get("lam") if "objective" in sections or g.get("kl_weight") is None else g.get("kl_weight")
        if "objective" in sections and o.get("budget") is not None:  # λ was a multiplier found during training
            levels = "grey level" if o["budget"] == 1 else "grey levels"
            rows.append(("collateral budget", f"{o['budget']:g} {levels} (mean |Î − Î0| outside M(Î0), 8-bit); "
                                              "λ found during training (see the λ curve in metrics.jsonl)"))
        else:
            rows.append(("λ (region constraint)", f"{lam} ({o.get('norm', 'fro')} norm)"))
        rows.append(("mask M(Î0)", mask_text(cfg.get("reward", {}), mask)))
    else:
        rows.append(("λ (region constraint)", "0 (none)"))
    if "grpo" not in sections:
        rows.append(("K (steps with gradient)", k))
    else:
        rows.append(("GRPO", f"group size {g.get('group_size')}, eta {g.get('eta')}, clip {g.get('clip_range')}, "
                             f"timesteps {g.get('timesteps') or 'all'}"))
    return rows


def terms_of(reward_cfg: dict) -> list[dict] | None:
    """The terms of a ``sum`` reward (each ``{name, weight, args, mask}``), else None."""
    terms = (reward_cfg.get("args") or {}).get("terms") if reward_cfg.get("name") == "sum" else None
    return [t for t in terms if isinstance(t, dict)] if isinstance(terms, list) else None


def reward_text(reward: str, reward_cfg: dict) -> str:
    terms = terms_of(reward_cfg)
    if not terms:
        return f"`{reward}`"
    return "`sum`: " + " + ".join(f"{t.get('weight', 1.0)} × `{t.get('name')}`" for t in terms)


def mask_text(reward_cfg: dict, mask: dict) -> str:
    """M(Î0)'s settings: the top-level ``mask`` section, or for a ``sum`` reward each term's own ``mask`` (its keys
    over :class:`~focusnfix.config.MaskConfig`'s defaults; the top-level section is not used), combined."""
    def one(m: dict) -> str:
        source = MASK_SOURCES.get(m.get("source"), str(m.get("source")))
        if m.get("source") == "none":
            return source
        cut = f"quantile {m['quantile']}" if m.get("quantile") else f"threshold {m.get('threshold')}"
        return f"{source}, {cut}, dilated {m.get('dilate')} px"

    terms = terms_of(reward_cfg)
    if not terms:
        return one(mask)
    defaults = vars(MaskConfig())
    combine = (reward_cfg.get("args") or {}).get("combine", "union")
    parts = [f"`{t.get('name')}`: {one({**defaults, **(t.get('mask') or {})})}" for t in terms]
    return f"the {combine} of each term's own mask: " + "; ".join(parts)


def sampler_name(pipeline: str) -> str:
    """The deterministic sampler training used for this family (Î0 and Î)."""
    if pipeline.startswith(FLOW):
        return "flow-matching Euler (the pipeline's `FlowMatchEulerDiscreteScheduler`)"
    if pipeline.startswith("StableDiffusion"):
        return "DDIM (η = 0)"
    return "DDIM (η = 0) for SD 1.x/2.x/SDXL bases, flow-matching Euler for SD3/FLUX bases"
