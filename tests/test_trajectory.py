"""objective.trajectory_weight: the region constraint on the early, gradient-free steps (methods/objective.py).
The term equals a hand computation from the sampler's own steps, the batched reference pass hands it the
trained rows, its steps are drawn per optimizer step, it carries gradient, and off it draws nothing."""
import math

import pytest
import torch
from conftest import base_overrides, perturb_lora

from focusnfix.backbones.lora import adapters_disabled
from focusnfix.config import load_config
from focusnfix.errors import ConfigError
from focusnfix.methods.base import Batch
from focusnfix.sampling import sample
from focusnfix.training.batches import make_batches
from focusnfix.training.trainer import Trainer

PROMPTS, SEEDS = ["a red circle", "a blue square"], [5, 9]
# the same float32 UNet calls in batches of other sizes round differently (tests/test_cache.py: IMG_TOL on
# images); the term is a norm of latents of order 1 summed over T - K steps, so a relative 1e-4 holds it
REL = 1e-4


def _trainer(tiny_dir, out, **extra):
    return Trainer(load_config(None, base_overrides(tiny_dir, out, **{
        "sampler.steps": 6, "objective.trajectory_weight": 1.0, "objective.trajectory_steps": 2, **extra})))


def test_term_equals_the_hand_computed_steps(tiny_dir, tmp_path):
    t = _trainer(tiny_dir, tmp_path / "run", **{"train.batch_reference": False})
    perturb_lora(t.backbone.unet)
    bb, method, early = t.backbone, t.method, (0, 3)
    _, logs = method.loss(Batch(prompts=PROMPTS, seeds=SEEDS, k=2, early=early))

    s = t.cfg.sampler
    rule, cond = bb.step_rule(s.steps, bb.device), bb.encode(PROMPTS, s.negative_prompt, s.guidance_scale)
    ref = method.reference(PROMPTS, SEEDS, cond=cond)
    outside = 1 - bb.latent_mask(ref.mask)
    with torch.no_grad():
        noise = bb.initial_noise(SEEDS)
        inputs = {0: noise, 3: sample(bb, cond, noise, s.steps, last=3)}  # the fine-tuned trajectory's x_j
        norms = []
        for j in early:
            x, tj = inputs[j], rule.timesteps[j]
            tuned = rule(bb.model_fn(x, tj, cond), j, tj, x)
            with adapters_disabled(bb.unet):
                frozen = rule(bb.model_fn(x, tj, cond), j, tj, x)
            d = outside * (tuned - frozen)
            # fro: the rms over the latent elements, in the image's Frobenius units (sqrt(3 H W))
            norms.append(d.flatten(1).norm(dim=1) / math.sqrt(d[0].numel()) * math.sqrt(3 * 32 * 32))
    expected = (s.steps - 2) * torch.stack(norms).mean(0).mean().item()
    assert expected > 1e-3  # the perturbed LoRA moves the early steps: the check can fail
    assert logs["trajectory"] == pytest.approx(expected, rel=REL)


def test_batched_reference_hands_the_term_the_trained_rows(tiny_dir, tmp_path):
    """On a reference-cache miss the early steps of Î0 and Î run as one batch; the term must read Î's rows."""
    t = _trainer(tiny_dir, tmp_path / "run")
    perturb_lora(t.backbone.unet, seed=2)
    values = {}
    for flag in (False, True):
        t.method.batch_reference = flag
        t.method.cache = None  # every reference is a miss
        _, logs = t.method.loss(Batch(prompts=PROMPTS, seeds=SEEDS, k=2, early=(1, 2)))
        values[flag] = logs["trajectory"]
    assert values[False] > 1e-3 and values[True] == pytest.approx(values[False], rel=REL)


def test_term_carries_gradient_into_the_lora(tiny_dir, tmp_path):
    """The term adds λρ x its gradient: with ρ = 1 the LoRA gradient differs from ρ = 0's on the same batch."""
    grads = {}
    for rho in (0.0, 1.0):
        t = _trainer(tiny_dir, tmp_path / f"run{rho}", **{"objective.trajectory_weight": rho, "objective.lam": 1.0})
        perturb_lora(t.backbone.unet, seed=3)
        loss, _ = t.method.loss(Batch(prompts=PROMPTS, seeds=SEEDS, k=2, early=(0, 2)))
        loss.backward()
        grads[rho] = torch.cat([p.grad.flatten() for n, p in t.backbone.unet.named_parameters()
                                if "lora_" in n and p.grad is not None])
    assert (grads[1.0] - grads[0.0]).norm() > 1e-3 * grads[0.0].norm()


def test_steps_are_drawn_per_optimizer_step_and_only_when_on(tiny_dir, tmp_path):
    on = load_config(None, base_overrides(tiny_dir, tmp_path, **{
        "sampler.steps": 10, "sampler.k": 2, "objective.trajectory_weight": 0.5, "objective.trajectory_steps": 3,
        "train.grad_accum": 2}))
    drawn = [make_batches(on, PROMPTS, step) for step in range(20)]
    for batches in drawn:
        early = batches[0].early
        assert len(early) == 3 == len(set(early)) and list(early) == sorted(early) and max(early) < 10 - 2
        assert all(b.early == early for b in batches)  # one draw per optimizer step, shared by its micro-batches
    assert len({b[0].early for b in drawn}) > 1
    assert [b[0].early for b in drawn] == [make_batches(on, PROMPTS, s)[0].early for s in range(20)]  # deterministic
    off = load_config(None, base_overrides(tiny_dir, tmp_path, **{"sampler.steps": 10, "sampler.k": 2,
                                                                   "train.grad_accum": 2}))
    for step in range(5):  # off: no draw, and the trajectories are the ones drawn with the term on
        for plain, with_term in zip(make_batches(off, PROMPTS, step), make_batches(on, PROMPTS, step)):
            assert plain.early == () and (plain.prompts, plain.seeds, plain.k) == (
                with_term.prompts, with_term.seeds, with_term.k)


def test_config_refuses_the_term_for_other_methods(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="objective.trajectory_weight"):
        load_config(None, base_overrides(tiny_dir, tmp_path, method="grpo", **{"objective.trajectory_weight": 1.0}))


def test_clean_weight_scales_the_constraint_of_images_with_nothing_to_fix(tiny_dir, tmp_path):
    """objective.clean_weight = c: an image whose M(I0) is empty weighs its constraint c times (with
    mask.source=none every mask is empty, so the logged constraint and the loss's penalty scale by c)."""
    logs = {}
    for c in (1.0, 3.0):
        t = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / f"c{c}", **{
            "objective.lam": 0.5, "objective.clean_weight": c, "mask.source": "none"})))
        perturb_lora(t.backbone.unet, seed=4)
        loss, logs[c] = t.method.loss(Batch(prompts=PROMPTS, seeds=SEEDS, k=2))
        logs[c]["loss_value"] = loss.item()
    assert logs[1.0]["constraint"] > 1e-3 and logs[1.0]["mask_frac"] == 0.0
    assert logs[3.0]["constraint"] == pytest.approx(3 * logs[1.0]["constraint"], rel=1e-6)
    assert logs[3.0]["loss_value"] - logs[1.0]["loss_value"] == pytest.approx(
        0.5 * 2 * logs[1.0]["constraint"], rel=1e-5)
    assert logs[3.0]["outside_change"] == logs[1.0]["outside_change"]  # the budget's measure is not weighted
