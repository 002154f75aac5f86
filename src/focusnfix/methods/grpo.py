"""GRPO and region-aware GRPO: policy-gradient fine-tuning for rewards with no (useful) gradient.

The policy is a stochastic sampler: DDIM with eta > 0 for the UNet families, the marginal-preserving SDE
of Flow-GRPO for the flow families (:class:`~focusnfix.sampling.FlowSDEStep`). Each transition
x_t -> x_{t-1} is Gaussian, N(mu_theta(x_t), sigma_t^2 I), so its log-density factorises over latent
elements (DDPO, Black et al. 2024; GRPO's group-normalised advantages and clipped ratio as in DeepSeekMath,
Shao et al. 2024, and Flow-GRPO, Liu et al. 2025). For each prompt, G samples; with rewards r_g and
A_g = (r_g - mean) / std over the group, the loss of one transition is

    L_pg = -min(rho A, clip(rho, 1 - eps, 1 + eps) A),   rho = exp(lp_theta - lp_old),

with lp the mean per-element log-probability (plain GRPO: over all elements). **Region-aware GRPO**
(``method=fnf-grpo``), the Focus-N-Fix idea for policy gradients: with M the problem mask of the sample
(from the reward's heatmap, on the latent grid),

    lp   = sum(M * lp_elem) / sum(M)                                   (the push acts inside M only)
    L_kl = mean over (1 - M) of ||mu_theta - mu_ref||^2 / (2 sigma_t^2)   (hold the rest to theta_0)
    L    = L_pg + lam * L_kl,                                          (lam: grpo.kl_weight)

mu_ref being the frozen model's (adapters off) mean at the same x_t. This KL is the exact per-element
KL between the two Gaussian transitions (equal variances). lam = 0 and M = 1 reduce to plain GRPO.

``grpo.mask_scope=group`` (ours) gives every sample of a group the union of the group's masks. With
per-sample masks a clean sample (no detection, M = 0) carries no policy gradient, though its advantage
is the largest: the group's contrast lives where *any* member had the problem, so the union is where
the clean samples did better.
A reward without a heatmap gives M = 1 (nothing tells where the problem is; gradient saliency needs a
differentiable reward): nothing lies outside M, so there is no KL (whatever its weight) and, with
``objective.budget``, no outside change to measure (0): region-aware GRPO then is plain GRPO plus nothing.
"""
from __future__ import annotations

import torch

from ..config import Config
from ..backbones.lora import adapters_disabled
from ..rewards.base import call_reward, term_logs
from ..rewards.compose import problem_mask
from ..sampling import gaussian_log_prob, sample_stochastic
from .base import Batch, MethodContext
from .budget import Budget
from .objective import outside_change


class GRPO:
    """``method=grpo`` (plain) and, with ``region=True``, ``method=fnf-grpo``. The trainer calls :meth:`loss`."""

    needs_reference = False
    region = False

    def __init__(self, backbone, reward, cfg: Config, context: MethodContext | None = None):
        """``context`` is not used: no deterministic reference (so no reference cache), no collective in the loss."""
        self.backbone, self.reward, self.cfg = backbone, reward, cfg
        self.g = cfg.grpo
        self.fixed_lam = kl_weight(cfg) if self.region else 0.0
        # objective.budget (fnf-grpo): the KL's weight is a multiplier found during training (methods/budget.py)
        o = cfg.objective
        self.budget = Budget(o.budget, o.budget_rate) if self.region and o.budget is not None else None

    @property
    def lam(self) -> float:
        """The weight of the KL outside the mask: the budget's multiplier, else grpo.kl_weight (0 for plain GRPO)."""
        return self.budget.lam if self.budget is not None else self.fixed_lam

    def after_step(self, logs: dict[str, float]) -> None:
        """The budget's dual step from the step's measured outside change (fnf-grpo with objective.budget). No
        anti-windup cap: a policy gradient gives no reward gradient on the image to scale it by. On the world a budget
        of 0.2 wound the weight up to 56-162 and held the fix to −13 % (BENCHMARKS.md, "Region-aware GRPO with a
        budget"): a cap for policies is open work."""
        if self.budget is not None:
            self.budget.update(logs["outside_change"])

    def state_dict(self) -> dict:
        return {"budget": self.budget.state_dict()} if self.budget is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.budget is not None and "budget" in state:
            self.budget.load_state_dict(state["budget"])

    def rule(self, device: torch.device):
        """The stochastic policy for the run's T steps on ``device``: eta-DDIM (UNet families) or the Flow-GRPO
        SDE (flow families)."""
        return self.backbone.stochastic_rule(self.g.eta, self.cfg.sampler.steps, device)

    # -- rollout: G samples per prompt, rewards, advantages, masks -----------------------------
    def expand(self, batch: Batch) -> tuple[list[str], list[int]]:
        """Each prompt G times; sample g of prompt seed s gets noise seed s * G + g (deterministic)."""
        G = self.g.group_size
        return [p for p in batch.prompts for _ in range(G)], [s * G + g for s in batch.seeds for g in range(G)]

    @torch.no_grad()
    def rollout(self, batch: Batch) -> dict:
        s = self.cfg.sampler
        prompts, seeds = self.expand(batch)
        cond = self.backbone.encode(prompts, s.negative_prompt, s.guidance_scale)
        noise = self.backbone.initial_noise(seeds)
        timesteps, xs, log_probs, stds = sample_stochastic(self.backbone, cond, noise, s.steps, self.rule(noise.device),
                                                           seeds)
        images = self.backbone.decode(xs[-1])
        out = call_reward(self.reward, images, prompts)
        score = out.score.detach().float()
        groups = score.view(-1, self.g.group_size)
        adv = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-6)
        adv = adv.clamp(-self.g.adv_clip, self.g.adv_clip).flatten()
        mask = self.latent_mask(images, prompts, out)
        if mask is not None and self.g.mask_scope == "group":  # each sample: the union of its group's masks
            G = self.g.group_size
            mask = (mask.view(-1, G, *mask.shape[1:]).amax(1, keepdim=True).expand(-1, G, *mask.shape[1:])
                    .reshape(mask.shape))
        change = None
        if self.budget is not None:  # score-only (M = 1): nothing outside M changes, no reference rollout
            change = 0.0 if mask is None else self.reference_change(cond, noise, seeds, prompts, images)
        return {"prompts": prompts, "seeds": seeds, "cond": cond, "timesteps": timesteps, "xs": xs,
                "log_probs": log_probs, "stds": stds, "score": score, "adv": adv, "mask": mask, "change": change,
                "terms": term_logs(out)}

    def reference_change(self, cond, noise: torch.Tensor, seeds: list[int], prompts: list[str],
                         images: torch.Tensor) -> float:
        """The budget's measure for a policy: Î0 is the frozen policy's rollout from the same x_T and the same
        transition noise (both drawn from the seeds, so Î0 is what the frozen model samples for this trajectory),
        M(Î0) its problem mask, and the measure the mean over the samples of fnf's outside change in grey levels
        (:func:`~.objective.outside_change`). One extra rollout without gradient per step; not called for a reward
        that cannot say where (M = 1: nothing outside, the change is 0)."""
        s = self.cfg.sampler
        with adapters_disabled(self.backbone.unet):
            _, xs, _, _ = sample_stochastic(self.backbone, cond, noise, s.steps, self.rule(noise.device), seeds)
            reference = self.backbone.decode(xs[-1])
        mask = self.image_mask(reference, prompts, call_reward(self.reward, reference, prompts))
        mask = torch.ones_like(reference[:, :1]) if mask is None else mask
        return outside_change(images, reference, mask).mean().item()

    def image_mask(self, images: torch.Tensor, prompts: list[str], out) -> torch.Tensor | None:
        """M ``(B,1,H,W)`` of the sampled images, or None for plain GRPO / a reward that cannot say where
        the problem is (M = 1)."""
        if not self.region:
            return None
        has_map = out.heatmap is not None or hasattr(self.reward, "problem_mask")
        if not has_map and not getattr(self.reward, "differentiable", False):
            return None  # score only: M = 1
        with torch.enable_grad():  # saliency needs the reward's gradient
            mask, _ = problem_mask(self.reward, images, prompts, self.cfg.mask)
        return mask.detach()

    def latent_mask(self, images: torch.Tensor, prompts: list[str], out) -> torch.Tensor | None:
        """M on the latent grid (a latent cell counts as problem if any of its pixels is; FLUX: packed like
        its latents), or None (M = 1)."""
        mask = self.image_mask(images, prompts, out)
        return None if mask is None else self.backbone.latent_mask(mask)

    def train_steps(self, batch: Batch) -> list[int]:
        """The denoising steps that carry the gradient: all T, or a random subset of ``grpo.timesteps``
        drawn from the batch's seeds (so a resumed run draws the same)."""
        T = self.cfg.sampler.steps
        n = self.g.timesteps or T
        if n >= T:
            return list(range(T))
        gen = torch.Generator().manual_seed(int(sum(batch.seeds)) % (2**63))
        return sorted(torch.randperm(T, generator=gen)[:n].tolist())

    # -- the loss ------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        roll = self.rollout(batch)
        rule, cond, mask, adv = self.rule(roll["xs"][0].device), roll["cond"], roll["mask"], roll["adv"]
        steps = self.train_steps(batch)
        total, kl_total = 0.0, 0.0
        for i in steps:
            t, x, x_next, std = roll["timesteps"][i], roll["xs"][i], roll["xs"][i + 1], roll["stds"][i]
            mean = rule.mean(self.backbone.model_fn(x, t, cond), i, t, x)
            pg, kl = self.step_loss(mean, x_next, std, roll["log_probs"][i], adv, mask, x, t, i, cond, rule)
            total = total + pg + self.lam * kl
            kl_total += kl.item()
        loss = total / len(steps)
        logs = {"loss": loss.item(), "reward": roll["score"].mean().item(), "k": float(len(steps)),
                "reward_std": roll["score"].view(-1, self.g.group_size).std(1).mean().item()}
        if self.region:
            logs["kl_outside"] = kl_total / len(steps)
            logs["mask_frac"] = 1.0 if mask is None else mask.mean().item()
        if self.budget is not None:
            logs.update(outside_change=roll["change"], lam=self.lam)
        logs.update({k: v.item() for k, v in roll["terms"].items()})  # a `sum` reward's terms: reward/<term>
        return loss, logs

    def step_loss(self, mean, x_next, std, old_lp, adv, mask, x, t, i, cond, rule) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_pg, L_kl) of one transition for the batch (means over samples)."""
        lp_elem = gaussian_log_prob(x_next, mean, std)
        lp, old = _region_mean(lp_elem, mask), _region_mean(old_lp, mask)
        ratio = torch.exp(lp - old)
        eps = self.g.clip_range
        pg = -torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv).mean()
        if not self.lam or mask is None:  # no weight, or M = 1 (score-only reward): nothing outside M to hold
            return pg, torch.zeros((), device=pg.device)
        with torch.no_grad(), adapters_disabled(self.backbone.unet):
            mean_ref = rule.mean(self.backbone.model_fn(x, t, cond), i, t, x)
        kl_elem = (mean - mean_ref) ** 2 / (2 * std.to(mean) ** 2)
        kl = _region_mean(kl_elem, 1 - mask).mean()
        return pg, kl

    @torch.no_grad()
    def preview(self, prompts: list[str], seeds: list[int]) -> dict[str, torch.Tensor]:
        """Frozen model | mask of the fine-tuned image (region-aware) | fine-tuned model, deterministic (eta = 0)."""
        from ..sampling import generate

        s = self.cfg.sampler
        with adapters_disabled(self.backbone.unet):
            reference = generate(self.backbone, prompts, seeds, s.steps, s.guidance_scale, s.negative_prompt)
        images = generate(self.backbone, prompts, seeds, s.steps, s.guidance_scale, s.negative_prompt)
        mask = torch.zeros_like(images[:, :1])
        if self.region:
            out = call_reward(self.reward, images, prompts)
            m = self.image_mask(images, prompts, out)
            mask = torch.ones_like(mask) if m is None else m
        return {"reference": reference, "mask": mask, "images": images}


class RegionGRPO(GRPO):
    """``method=fnf-grpo``: region-aware GRPO (see the module docstring); ``grpo.kl_weight`` weighs the KL."""

    region = True


def kl_weight(cfg: Config) -> float:
    """fnf-grpo's weight of the KL outside the mask: ``grpo.kl_weight``; unset, ``objective.lam`` (its old key)."""
    return cfg.grpo.kl_weight if cfg.grpo.kl_weight is not None else cfg.objective.lam


def _region_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean of ``values`` ``(B, C, h, w)`` over the elements where ``mask`` ``(B, 1, h, w)`` is 1
    (all elements for None). A sample with an empty region contributes 0."""
    if mask is None:
        return values.flatten(1).mean(1)
    weights = mask.to(values).expand_as(values)
    return (values * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1.0)
