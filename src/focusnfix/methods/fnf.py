"""Focus-N-Fix (Xing, Saha, He et al., CVPR 2025): reward fine-tuning confined to problem regions.

For prompt c and noise x_T:  Î0 = frozen model (adapters off, no grad), M = mask(Î0),
Î = fine-tuned model with gradient through the last K steps (DRaFT-K), and
L = -r(Î, c) + λ ‖(1 - M) ⊙ (Î - Î0)‖  (see :mod:`focusnfix.objective`).
"""
from __future__ import annotations

import torch

from ..config import Config
from ..errors import FocusNFixError
from ..backbones.lora import adapters_disabled, adapters_per_row
from ..rewards.base import call_reward, term_logs
from ..rewards.compose import problem_mask
from .budget import Budget
from .objective import fnf_loss, latent_region_constraint, outside_change, region_constraint
from ..sampling import conditioning_rows, grad_checkpointing_on, sample
from .base import Batch, MethodContext, Reference, expand


class FocusNFix:
    """Region-constrained DRaFT-K. ``lam`` is λ; the trainer calls :meth:`loss` per micro-batch."""

    def __init__(self, backbone, reward, cfg: Config, context: MethodContext | None = None):
        if not getattr(reward, "differentiable", True):
            raise FocusNFixError(f"reward {getattr(reward, 'name', type(reward).__name__)!r} has no gradient "
                                 "(differentiable = False); Focus-N-Fix and DRaFT backpropagate through it: use "
                                 "method=fnf-grpo or grpo")
        ctx = context or MethodContext()
        self.backbone, self.reward, self.cfg = backbone, reward, cfg
        self.lam = self.weight(cfg)
        o = cfg.objective  # objective.budget: λ is a multiplier found during training (.budget), starting at 0
        self.budget = Budget(o.budget, o.budget_rate) if o.budget is not None and self.constrained else None
        # the run's reference cache (focusnfix.training.cache.ReferenceCache), built only when Î0 is needed
        self.cache = ctx.make_cache() if ctx.make_cache is not None and self.needs_reference else None
        self.batch_reference = cfg.train.batch_reference if ctx.batch_reference is None else ctx.batch_reference
        # row chunks of a checkpointed call (sampling.chunked_checkpoint)
        self.checkpoint_chunks = cfg.sampler.checkpoint_chunks
        self.lockstep = ctx.lockstep  # sharded training: bool -> "true on any rank?" (a collective)

    constrained = True  # whether the region constraint applies (DRaFT: no)

    @staticmethod
    def weight(cfg: Config) -> float:
        """λ, the weight of the region constraint: ``objective.lam``."""
        return cfg.objective.lam

    @property
    def needs_reference(self) -> bool:
        return self.lam > 0 or self.budget is not None

    def after_step(self, logs: dict[str, float]) -> None:
        """After an optimizer step, with its logs averaged over micro-batches and ranks: the budget's dual step (on
        the steps that measured the change: :meth:`measures`)."""
        if self.budget is not None and "outside_change" in logs:
            self.budget.update(logs["outside_change"], logs["lam_eq"])

    def measures(self, step: int) -> bool:
        """Whether optimizer step ``step`` computes Î0 (and so the constraint and the measured change): always with
        a fixed λ > 0 or a positive multiplier; in a budget's slack (λ = 0) one step in
        ``objective.budget_measure_every``, the others are DRaFT steps (λ = 0 weighs the constraint by nothing, so
        their gradient is the same without Î0)."""
        if self.budget is None:
            return self.needs_reference
        return self.budget.lam > 0 or step % self.cfg.objective.budget_measure_every == 0

    def _lam_eq(self, score: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Batch mean of λ_eq = ‖∂r/∂Î‖ / (the penalty's pull on Î per unit λ: 1 for the Frobenius norm, 1/√(3HW) for
        rms), the λ at which the two terms pull equally on each image (methods/budget.py); no gradient is kept."""
        (pull,) = torch.autograd.grad(score.sum(), images, retain_graph=True)
        unit = 1.0 if self.cfg.objective.norm == "fro" else images[0].numel() ** -0.5
        return pull.detach().flatten(1).norm(dim=1).mean() / unit

    def state_dict(self) -> dict:
        """Training state beyond the LoRA and optimizer (checkpointed): the budget's multiplier and the reference
        cache's contents (their keys; the entries are spilled to disk once: :meth:`ReferenceCache.snapshot`), so a
        resumed run reads the same Î0 where the uninterrupted run read a cached one. Called on the main process."""
        state = {"budget": self.budget.state_dict()} if self.budget is not None else {}
        return {**state, "reference_cache": self.cache.snapshot()} if self.cache is not None else state

    def load_state_dict(self, state: dict) -> None:
        if self.budget is not None and "budget" in state:
            self.budget.load_state_dict(state["budget"])
        if self.cache is not None and "reference_cache" in state and _main_rank():
            self.cache.restore(state["reference_cache"])  # other ranks' caches were not saved: they start empty

    # -- M(Î0) -----------------------------------------------------------------------------
    def mask(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M(Î0), map)``: a composite reward makes its own (per-term settings), else the ``mask`` section."""
        return problem_mask(self.reward, images, prompts, self.cfg.mask)

    # -- Î0 -----------------------------------------------------------------------------------
    def reference(self, prompts: list[str], seeds: list[int], cond=None) -> Reference:
        """Î0 and M(Î0) from the frozen model θ0 (same UNet, adapters disabled), no gradient.

        With a :class:`~focusnfix.cache.ReferenceCache` attached (``self.cache``), pairs seen before
        are read from it and only the missing ones are computed, as one batch. ``cond``: the prompts'
        conditioning when already encoded."""
        entries, missing = self._lookup(prompts, seeds)
        if missing:
            rows = conditioning_rows(cond, missing) if cond is not None else None
            self._store(entries, missing, prompts, seeds,
                        self._compute_reference(*_pick(missing, prompts, seeds), cond=rows))
        return self._stack(entries)

    def encode(self, prompts: list[str]):
        """The text conditioning of ``prompts`` (the sampler's negative prompt and guidance scale)."""
        s = self.cfg.sampler
        return self.backbone.encode(prompts, s.negative_prompt, s.guidance_scale)

    def reference_and_trained(self, prompts: list[str], seeds: list[int], k: int,
                              capture: dict | None = None) -> tuple[Reference, torch.Tensor]:
        """(Î0 with M(Î0), Î) for one micro-batch.

        Î0 and Î start from the same x_T, so on a reference-cache miss (with ``train.batch_reference``)
        the frozen and the fine-tuned model's first T-K steps, all without gradient, run as one UNet
        batch with per-row adapters (:func:`~focusnfix.lora.adapters_per_row`): T-K calls fewer than
        two separate passes. Then Î0 finishes its K steps without gradient and Î with gradient.

        The prompts are encoded once (B rows); the reference rows reuse theirs. ``capture``: the trained
        trajectory's latents x_j before the steps j it names (:meth:`trained_images`)."""
        entries, missing = self._lookup(prompts, seeds)
        s, split = self.cfg.sampler, self.cfg.sampler.steps - k
        cond = self.encode(prompts)
        if not (missing and self.batch_reference and split > 0):
            if missing:
                fresh = self._compute_reference(*_pick(missing, prompts, seeds), cond=conditioning_rows(cond, missing))
                self._store(entries, missing, prompts, seeds, fresh)
            return self._stack(entries), self.trained_images(prompts, seeds, k, cond=cond, capture=capture)
        ref_prompts, ref_seeds = _pick(missing, prompts, seeds)
        device = self.backbone.device
        active = torch.tensor([0.0] * len(missing) + [1.0] * len(prompts), device=device)  # θ0 rows, then θ rows
        with torch.no_grad(), adapters_per_row(self.backbone.unet, active):
            both = conditioning_rows(cond, missing + list(range(len(prompts))))
            noise = self.backbone.initial_noise(ref_seeds + seeds)
            x = sample(self.backbone, both, noise, s.steps, last=split,
                       callback=_capturer(capture, noise, rows=slice(len(missing), None)))
        fresh = self._compute_reference(ref_prompts, ref_seeds, latents=x[: len(missing)], first=split,
                                        cond=conditioning_rows(cond, missing))
        self._store(entries, missing, prompts, seeds, fresh)
        return self._stack(entries), self.trained_images(prompts, seeds, k, latents=x[len(missing):], first=split,
                                                         cond=cond)

    def _lookup(self, prompts: list[str], seeds: list[int]) -> tuple[list, list[int]]:
        """Cached entries (None where missing) and the indices to compute."""
        entries = [self.cache.get(p, s) if self.cache is not None else None for p, s in zip(prompts, seeds)]
        missing = [i for i, e in enumerate(entries) if e is None]
        if self.lockstep is not None and self.lockstep(bool(missing)) and not missing:
            # FSDP: run the reference pass on every rank or none (equal to the cached one)
            missing = list(range(len(entries)))
        return entries, missing

    def _store(self, entries: list, missing: list[int], prompts: list[str], seeds: list[int], fresh: Reference) -> None:
        """Fresh references into ``entries`` (on the device, as computed) and into the cache (compacted
        there: :func:`focusnfix.cache.compact`)."""
        for j, i in enumerate(missing):
            entries[i] = {"images": fresh.images[j], "mask": fresh.mask[j]}
            if self.cache is not None:
                self.cache.put(prompts[i], seeds[i], entries[i])

    def _stack(self, entries: list) -> Reference:
        """The batch's Î0 and M(Î0) as float tensors on the device (cached masks may be stored as uint8)."""
        read = [expand(e, self.backbone.device) for e in entries]
        return Reference(images=torch.stack([e["images"] for e in read]), mask=torch.stack([e["mask"] for e in read]))

    def _compute_reference(self, prompts: list[str], seeds: list[int], latents: torch.Tensor | None = None,
                           first: int = 0, cond=None) -> Reference:
        """Î0 and M(Î0); ``latents``/``first`` resume a trajectory whose first steps ran elsewhere; ``cond``:
        the prompts' conditioning when already encoded."""
        s = self.cfg.sampler
        with torch.no_grad(), adapters_disabled(self.backbone.unet):
            cond = self.encode(prompts) if cond is None else cond
            x = self.backbone.initial_noise(seeds) if latents is None else latents
            images = self.backbone.decode(sample(self.backbone, cond, x, s.steps, first=first))
        mask, heat = self.mask(images, prompts)
        return Reference(images=images, mask=mask, heatmap=heat)

    # -- Î with gradient through the last K steps ----------------------------------------------
    def trained_images(self, prompts: list[str], seeds: list[int], k: int, latents: torch.Tensor | None = None,
                       first: int = 0, cond=None, capture: dict | None = None) -> torch.Tensor:
        """Î with gradient through its last K steps and the decode; checkpointed calls (``sampler.grad_checkpointing``,
        ``sampler.vae_checkpointing``) run as ``checkpoint_chunks`` row chunks, so backward recomputes one at a time.
        ``capture``: ``{j: None}`` for steps j >= ``first``, filled with the (detached) latents x_j entering step j."""
        s = self.cfg.sampler
        cond = self.encode(prompts) if cond is None else cond
        x = self.backbone.initial_noise(seeds) if latents is None else latents
        latents = sample(self.backbone, cond, x, s.steps, k=k,
                         grad_checkpointing=grad_checkpointing_on(s.grad_checkpointing, k),
                         first=first, chunks=self.checkpoint_chunks,
                         callback=_capturer(capture, x.detach() if first == 0 else None))
        return self.backbone.decode(latents, grad_checkpointing=s.vae_checkpointing, chunks=self.checkpoint_chunks)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """L = mean over the batch of -r(Î, c) + λ ‖(1 - M(Î0)) ⊙ (Î - Î0)‖."""
        rho = self.cfg.objective.trajectory_weight  # ρ: the early steps' term (objective.latent_region_constraint)
        measured = self.measures(batch.step)
        capture = dict.fromkeys(batch.early) if measured and rho > 0 and batch.early else None
        if measured:
            ref, images = self.reference_and_trained(batch.prompts, batch.seeds, batch.k, capture=capture)
        else:
            ref, images = None, self.trained_images(batch.prompts, batch.seeds, batch.k)
        out = call_reward(self.reward, images, batch.prompts)
        score, constraint = out.score, None
        if ref is not None:
            constraint = region_constraint(images, ref.images, ref.mask, self.cfg.objective.norm,
                                           self.cfg.objective.eps)
            c = self.cfg.objective.clean_weight  # images with nothing to fix (empty M) weigh c times more
            if c != 1.0:
                empty = ref.mask.flatten(1).amax(1) < 0.5
                constraint = torch.where(empty, c * constraint, constraint)
            if capture:
                early = self.trajectory_term(batch.prompts, capture, ref.mask, images[0].numel(),
                                             self.cfg.sampler.steps - batch.k)
                constraint = constraint + rho * early
        warmup = self.cfg.objective.lam_warmup  # λ ramps 0 -> λ over the first `warmup` steps (0: off, the paper)
        lam = self.lam * min(1.0, batch.step / warmup) if warmup else self.lam
        if self.budget is not None:
            lam = self.budget.lam
        loss = fnf_loss(score, constraint, lam)
        names, values = ["loss", "reward"], [loss.detach(), score.detach().mean()]
        if ref is not None:  # outside_change: grey levels, the budget's measure
            names += ["constraint", "mask_frac", "outside_change"]
            values += [constraint.detach().mean(), ref.mask.mean(), outside_change(images, ref.images, ref.mask).mean()]
        if capture:
            names.append("trajectory")
            values.append(early.detach().mean())
        if self.budget is not None and measured:  # λ_eq: where the constraint pulls on Î as hard as the reward
            names.append("lam_eq")
            values.append(self._lam_eq(score, images))
        terms = term_logs(out)  # a `sum` reward's terms: reward/<term>
        names, values = names + list(terms), values + list(terms.values())
        read = dict(zip(names, torch.stack([v.float() for v in values]).tolist()))  # one host sync
        logs = {"loss": read.pop("loss"), "reward": read.pop("reward"), "k": batch.k, **read}
        if warmup or self.budget is not None:
            logs["lam"] = lam
        return loss, logs

    def trajectory_term(self, prompts: list[str], inputs: dict[int, torch.Tensor], mask: torch.Tensor,
                        image_numel: int, early_steps: int) -> torch.Tensor:
        """(T − K) × the mean over the steps j in ``inputs`` (latents x_j of the trained trajectory entering step j) of
        ‖(1 − M↓) ⊙ (step_θ(x_j) − step_θ0(x_j))‖ per sample, ``(B,)``: how differently the fine-tuned and the frozen
        model move the same latents outside the mask at step j (x_{j+1} by the sampler's own step rule), summed over
        the ``early_steps`` = T − K gradient-free steps by the J-step sample. The fine-tuned call carries gradient,
        the frozen one none (:func:`~.objective.latent_region_constraint`)."""
        bb = self.backbone
        rule = bb.step_rule(self.cfg.sampler.steps, bb.device)  # a private scheduler copy, as every sampler call makes
        cond, grid = self.encode(prompts), bb.latent_mask(mask)  # the conditioning is cached while training
        terms = []
        for j, x in sorted(inputs.items()):
            t = rule.timesteps[j]
            with torch.no_grad(), adapters_disabled(bb.unet):
                frozen = rule(bb.model_fn(x, t, cond), j, t, x)
            tuned = rule(bb.model_fn(x, t, cond), j, t, x)
            terms.append(latent_region_constraint(tuned, frozen, grid, image_numel, self.cfg.objective.norm))
        return early_steps * torch.stack(terms).mean(0)

    @torch.no_grad()
    def preview(self, prompts: list[str], seeds: list[int]) -> dict[str, torch.Tensor]:
        """Î0, M(Î0) and Î for the sample grids (no gradient)."""
        cond = self.encode(prompts)
        ref = self.reference(prompts, seeds, cond=cond)
        images = self.trained_images(prompts, seeds, k=0, cond=cond)
        return {"reference": ref.images, "mask": ref.mask, "images": images}


def _capturer(capture: dict | None, noise: torch.Tensor | None, rows: slice = slice(None)):
    """A sampler callback that stores the latents entering each step named in ``capture`` (a dict ``{j: None}``,
    filled in place; rows ``rows`` of the sampled batch); ``noise``: x_T, the input of step 0. None: no callback."""
    if not capture:
        return None
    if noise is not None and 0 in capture:
        capture[0] = noise[rows].detach()

    def store(i: int, t, x: torch.Tensor) -> None:  # x: the latents after step i, entering step i + 1
        if i + 1 in capture:
            capture[i + 1] = x[rows]

    return store


def _pick(indices: list[int], prompts: list[str], seeds: list[int]) -> tuple[list[str], list[int]]:
    return [prompts[i] for i in indices], [seeds[i] for i in indices]


def _main_rank() -> bool:
    """Whether this process is the main one (or the only one): the one whose state the checkpoint holds."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
        or torch.distributed.get_rank() == 0
