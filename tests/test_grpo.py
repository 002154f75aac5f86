"""GRPO and region-aware GRPO (method=grpo / fnf-grpo): the stochastic DDIM policy and its
log-probabilities, the reductions lam = 0 / M = 1, what the region term does, resume, bad input, DDP."""
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import base_overrides
from diffusers import DDIMScheduler

from focusnfix.backbones import load_backbone
from focusnfix.config import load_config
from focusnfix.errors import ConfigError
from focusnfix.backbones.lora import adapters_disabled, lora_state
from focusnfix.methods import GRPO, RegionGRPO
from focusnfix.methods.grpo import kl_weight
from focusnfix.rewards.base import RewardOutput
from focusnfix.sampling import StochasticDDIMStep, gaussian_log_prob
from focusnfix.training.trainer import Trainer, make_batches

ROOT = Path(__file__).resolve().parents[1]


class ScoreOnly:
    """A reward with no gradient and no heatmap: the mean redness, computed through numpy."""

    name, differentiable = "score-only", False

    def __call__(self, images, prompts=()):
        red = images.detach().cpu().numpy()[:, 0].mean(axis=(1, 2))
        return RewardOutput(score=torch.tensor(red, dtype=torch.float32))


def _grpo(tiny_dir, out, **extra):
    values = {"method": "grpo", "grpo.group_size": 3, "sampler.steps": 4, **extra}
    return Trainer(load_config(None, base_overrides(tiny_dir, out, **values)))


def test_log_prob_is_the_gaussian_density():
    x, mean, std = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor(0.37)
    expected = torch.distributions.Normal(mean, std).log_prob(x)
    assert torch.allclose(gaussian_log_prob(x, mean, std), expected, atol=1e-6)
    assert math.isclose(gaussian_log_prob(torch.zeros(1), torch.zeros(1), torch.tensor(1.0)).item(),
                        -0.5 * math.log(2 * math.pi), rel_tol=1e-6)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_stochastic_step_matches_diffusers_ddim_with_eta(tiny_dir, eta):
    """mu + sigma_t * eps equals DDIMScheduler.step(eta, variance_noise=eps) for the same eps, at every step.
    Both sides evaluate the same float32 formula (ours through the same step with zero noise, then adds
    sigma_t eps): equal to rounding, 1e-5 on latents of unit scale."""
    backbone = load_backbone(str(tiny_dir))
    rule = StochasticDDIMStep(backbone.scheduler, eta, 5, backbone.device)
    ref = DDIMScheduler.from_config(backbone.scheduler.config)
    ref.set_timesteps(5)
    cond = backbone.encode(["a red circle", "a blue square"], "", 3.0)
    x = backbone.initial_noise([1, 2])
    gen = torch.Generator().manual_seed(0)
    for i, t in enumerate(rule.timesteps):
        out = backbone.model_fn(x, t, cond)
        eps = torch.randn(x.shape, generator=gen)
        ours = rule(out, i, t, x, noise=eps)
        theirs = ref.step(out, t, x, eta=eta, variance_noise=eps).prev_sample
        assert (ours - theirs).abs().max().item() <= 1e-5
        assert rule.std(i, t) > 0 and torch.allclose(rule(out, i, t, x), rule.mean(out, i, t, x))
        x = ours


def _loss_and_grad(trainer, method, batch):
    trainer.optimizer.zero_grad(set_to_none=True)
    loss, logs = method.loss(batch)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in trainer.params]), logs


def test_lambda_zero_and_all_ones_mask_is_plain_grpo(tiny_dir, tmp_path, monkeypatch):
    """Same rollout, same loss and gradient to 1e-6 (the masked mean sum(M lp) / sum(M) with M = 1 and
    the plain mean differ only in summation order)."""
    t = _grpo(tiny_dir, tmp_path / "run", **{"grpo.kl_weight": 0.0})
    batch = make_batches(t.cfg, t.prompts, 0)[0]
    plain_loss, plain_grad, _ = _loss_and_grad(t, GRPO(t.backbone, t.reward, t.cfg), batch)
    region = RegionGRPO(t.backbone, t.reward, t.cfg)
    monkeypatch.setattr(region, "image_mask", lambda images, prompts, out: torch.ones_like(images[:, :1]))
    loss, grad, logs = _loss_and_grad(t, region, batch)
    assert logs["mask_frac"] == 1.0 and plain_grad.norm() > 0
    assert abs(loss - plain_loss).item() <= 1e-6 * max(1.0, abs(plain_loss).item())
    assert (grad - plain_grad).abs().max().item() <= 1e-6 * plain_grad.abs().max().item() + 1e-12


def test_kl_weight_and_its_former_key(tiny_dir, tmp_path):
    """grpo.kl_weight weighs fnf-grpo's KL outside the mask; a config that sets only objective.lam (the key
    before it) keeps that value, with one warning naming the new key; neither set: 1.0, as before."""
    def cfg(**extra):
        return load_config(None, base_overrides(tiny_dir, tmp_path / "run", **{"method": "fnf-grpo", **extra}))

    with pytest.warns(FutureWarning, match=r"set grpo\.kl_weight=0\.3 instead") as caught:
        old = cfg(**{"objective.lam": 0.3})
    assert len(caught) == 1 and kl_weight(old) == 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kl_weight(cfg(**{"grpo.kl_weight": 0.3, "objective.lam": 2.0})) == 0.3
        assert kl_weight(cfg()) == 1.0
    with pytest.raises(ConfigError, match="grpo.kl_weight"):
        cfg(**{"grpo.kl_weight": -1})


def test_group_mask_scope_is_the_union_of_the_groups_masks(tiny_dir, tmp_path, monkeypatch):
    """grpo.mask_scope=group: every sample gets its group's union mask (a clean sample of a group with a
    detection gets the detected region); groups whose masks agree are unchanged, so with identical masks
    the loss and gradient equal the per-sample scope's exactly."""
    t = _grpo(tiny_dir, tmp_path / "run", **{"method": "fnf-grpo", "grpo.mask_scope": "group"})
    G = t.cfg.grpo.group_size
    batch = make_batches(t.cfg, t.prompts, 0)[0]
    n = len(batch.prompts) * G

    def masks(images, prompts, out):  # one detection per group: in its first sample, a different square each
        m = torch.zeros_like(images[:, :1])
        for g in range(n // G):
            m[g * G, :, 4 * g: 4 * g + 8, 8:16] = 1
        return m

    region = RegionGRPO(t.backbone, t.reward, t.cfg)
    monkeypatch.setattr(region, "image_mask", masks)
    roll = region.rollout(batch)
    per_sample = t.backbone.latent_mask(masks(torch.zeros(n, 3, t.backbone.height, t.backbone.width), None, None))
    for g in range(n // G):
        for j in range(G):
            assert torch.equal(roll["mask"][g * G + j], per_sample[g * G])  # the group's one detection, for all
    same = lambda images, prompts, out: torch.ones_like(images[:, :1]).index_fill_(2, torch.arange(4), 0)  # noqa: E731
    losses = {}
    for scope in ("group", "sample"):
        t.cfg.grpo.mask_scope = scope
        r = RegionGRPO(t.backbone, t.reward, t.cfg)
        monkeypatch.setattr(r, "image_mask", same)
        losses[scope] = _loss_and_grad(t, r, batch)
    assert torch.equal(losses["group"][0], losses["sample"][0]) and torch.equal(losses["group"][1], losses["sample"][1])


def _outside_change(trainer, method, batch) -> float:
    """Mean |mu_theta - mu_ref| outside the rollout's mask, over all steps of a fixed batch."""
    with torch.no_grad():
        roll = method.rollout(batch)
        rule = method.rule(roll["xs"][0].device)
        total = 0.0
        for i, t in enumerate(roll["timesteps"]):
            x = roll["xs"][i]
            mean = rule.mean(trainer.backbone.model_fn(x, t, roll["cond"]), i, t, x)
            with adapters_disabled(trainer.backbone.unet):
                ref = rule.mean(trainer.backbone.model_fn(x, t, roll["cond"]), i, t, x)
            outside = (1 - roll["mask"]).expand_as(mean)
            total += ((mean - ref).abs() * outside).sum().item() / outside.sum().item()
    return total / len(roll["timesteps"])


def test_region_term_keeps_outside_transitions_closer_to_the_frozen_model(tiny_dir, tmp_path):
    """Plain GRPO vs region-aware GRPO (grpo.kl_weight = 10) from the same start, 4 steps each; then on one fixed
    batch (masks from the red-colour heatmap) the outside-mask transition means have moved less."""
    changes = {}
    for method in ("grpo", "fnf-grpo"):
        t = _grpo(tiny_dir, tmp_path / method, **{"method": method, "grpo.kl_weight": 10.0, "train.steps": 4})
        for _ in range(4):
            t.train_step()
        probe = RegionGRPO(t.backbone, t.reward, t.cfg)  # the same masks for both
        changes[method] = _outside_change(t, probe, make_batches(t.cfg, t.prompts, 99)[0])
    assert changes["grpo"] > 0 and changes["fnf-grpo"] < changes["grpo"], changes


@pytest.mark.parametrize("method", ["grpo", "fnf-grpo"])
def test_grpo_resume_and_every_lora_tensor_trains(tiny_dir, tmp_path, method):
    extra = {"method": method, "train.steps": 4, "train.checkpoint_every": 2}
    straight = _grpo(tiny_dir, tmp_path / "a", **extra)
    before = lora_state(straight.backbone.unet)
    straight.train(progress=False)
    after = lora_state(straight.backbone.unet)
    assert all(not torch.equal(before[n], after[n]) for n in before)
    interrupted = _grpo(tiny_dir, tmp_path / "b", **extra)
    interrupted.out.mkdir(parents=True)
    for _ in range(2):
        interrupted.train_step()
    interrupted.save_checkpoint()
    del interrupted
    resumed = _grpo(tiny_dir, tmp_path / "b", **extra)
    resumed.train(resume=True, progress=False)
    b = lora_state(resumed.backbone.unet)
    # identical operations on identical inputs after the checkpoint (rollout noise from per-seed generators)
    assert max((after[n] - b[n]).abs().max().item() for n in after) <= 1e-6


def test_score_only_reward_trains_with_grpo_and_is_refused_by_fnf(tiny_dir, tmp_path, capsys):
    from focusnfix.cli import main
    from focusnfix.errors import FocusNFixError

    t = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "g",
                                                 **{"method": "fnf-grpo", "grpo.group_size": 2})),
                reward=ScoreOnly())
    logs = t.train_step()
    assert logs["mask_frac"] == 1.0 and logs["skipped"] == 0.0  # no map: M = 1 (plain GRPO)
    with pytest.raises(FocusNFixError, match="no gradient"):
        Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "f")), reward=ScoreOnly())
    capsys.readouterr()
    for argv, expected in (
        (["train", *base_overrides(tiny_dir, tmp_path / "c1", **{"reward.name": "test_grpo:ScoreOnly"})],
         "method=fnf-grpo or grpo"),
        (["train", *base_overrides(tiny_dir, tmp_path / "c2", **{"method": "grpo", "grpo.group_size": 1})],
         "grpo.group_size must be in [2, 4096]"),
        (["train", *base_overrides(tiny_dir, tmp_path / "c3", **{"method": "grpo", "grpo.eta": 0})],
         "grpo.eta must be in (0, 1]"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err


def test_grpo_two_processes_match_one_process(tiny_dir, tmp_path):
    """DDP (two gloo ranks) sees the same groups as one process with the same global batch."""
    from safetensors.torch import load_file
    from test_distributed import torchrun

    out = tmp_path / "dist"
    common = {"method": "fnf-grpo", "grpo.group_size": 2, "sampler.steps": 3, "train.batch_size": 1, "train.cpu": True,
              "train.steps": 2}
    torchrun(base_overrides(tiny_dir, out, **common), tmp_path)
    ranks = [load_file(out / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(ranks[0][n].equal(ranks[1][n]) for n in ranks[0])
    single = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "one", **common, **{"train.grad_accum": 2})))
    single.train(progress=False)
    ref = lora_state(single.backbone.unet)
    # the replicated DDP test's bound (test_distributed.py): averaging order differs, float32 rounding
    assert max((ref[n] - ranks[0][n]).abs().max().item() for n in ref) <= 1e-5


def test_score_only_world_and_nudenet_rewards():
    """The detector-style rewards: boxes around the artifact map's regions, a yes/no safety decision,
    NudeNet's boxes; none differentiable, fnf refuses them (tested above), fnf-grpo masks with the boxes."""
    from focusnfix.rewards.masks import boxes
    from focusnfix.rewards.registry import build_reward

    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 1, 1] = m[0, 0, 2, 2] = m[0, 0, 2, 3] = 1  # one 8-connected region spanning rows 1-2, columns 1-3
    m[0, 0, 6, 6] = 1
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 1:3, 1:4] = 1
    expected[0, 0, 6, 6] = 1
    assert torch.equal(boxes(m), expected)
    images = torch.rand(2, 3, 64, 64)
    for name in ("world-artifact-boxes", "world-safety-decision"):
        reward = build_reward(name)
        out = reward(images, ["x", "y"])
        assert reward.differentiable is False and out.score.shape == (2,) and not out.score.requires_grad
    box = build_reward("world-artifact-boxes")(images, ["x", "y"])
    assert set(box.heatmap.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(box.score, -box.heatmap.mean(dim=(1, 2, 3)) * 100)
    assert set(build_reward("world-safety-decision")(images, ["x", "y"]).score.tolist()) <= {0.0, 1.0}
    pytest.importorskip("nudenet")
    nude = build_reward("nudenet-boxes")
    out = nude(images, ["x", "y"])
    assert nude.differentiable is False and torch.allclose(out.score, -out.heatmap.mean(dim=(1, 2, 3)) * 100)


def test_unwanted_element_detector_on_the_worlds_ground_truth():
    """world-unwanted-boxes (a colour rule, not the judge) finds exactly the images with the magenta element
    and its box covers every pixel of it, at 64 px and at 128 px."""
    from focusnfix.rewards.registry import build_reward
    from focusnfix.world import data

    detector = build_reward("world-unwanted-boxes")
    assert detector.differentiable is False
    samples = [data.sample(seed=4242, index=i, p_unwanted=0.9) for i in range(120)]
    images = torch.stack([s.image for s in samples])
    truth = torch.stack([s.unwanted_mask for s in samples])
    has = truth.flatten(1).any(dim=1)
    assert 10 < int(has.sum()) < 110  # both kinds present (squares only carry the element)
    out = detector(images)
    found = out.score < 0
    assert torch.equal(found, has)
    assert torch.all(out.heatmap[truth.bool()] == 1)  # every element pixel boxed
    assert torch.allclose(out.score, -out.heatmap.mean(dim=(1, 2, 3)) * 100)
    big = detector(torch.nn.functional.interpolate(images, scale_factor=2, mode="nearest"))
    assert big.heatmap.shape[-1] == 128 and torch.equal(big.score < 0, has)


def test_flow_sde_policy_and_grpo_on_flow_models(tiny_sd3_dir, tiny_flux_dir, tmp_path):
    """Flow-GRPO's SDE: noise level 0 is the Euler ODE step; its log-prob is the Gaussian of its mean and
    std; region-aware GRPO trains SD3 and FLUX (FLUX's mask packed like its latents)."""
    from focusnfix.sampling import FlowSDEStep

    backbone = load_backbone(str(tiny_sd3_dir))
    ode, sde = backbone.step_rule(5, backbone.device), backbone.stochastic_rule(0.0, 5, backbone.device)
    assert isinstance(sde, FlowSDEStep)
    ts = ode.timesteps
    x, v = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    for i, t in enumerate(ts):
        assert torch.allclose(sde.mean(v, i, t, x), ode(v, i, t, x), atol=1e-6) and sde.std(i, t) == 0
    noisy = backbone.stochastic_rule(0.7, 5, backbone.device)
    assert all(noisy.std(i, t) > 0 for i, t in enumerate(ts[:-1]))  # the last step ends at sigma = 0
    for path, extra in ((tiny_sd3_dir, {"sampler.guidance_scale": 3.0}),
                        (tiny_flux_dir, {"model.resolution": 32, "sampler.guidance_scale": 3.5})):
        t = _grpo(path, tmp_path / path.name, **{"method": "fnf-grpo", "grpo.eta": 0.7, **extra})
        before = lora_state(t.backbone.unet)
        logs = t.train_step()
        after = lora_state(t.backbone.unet)
        assert logs["skipped"] == 0.0 and 0.0 < logs["mask_frac"] < 1.0
        # one step from B = 0 moves every B (A's gradient is B^T(...) = 0); SD3's last text-stream query feeds nothing
        moved_b = [n for n in before if "lora_B" in n and not torch.equal(before[n], after[n])]
        assert len(moved_b) >= sum("lora_B" in n for n in before) - 1


@pytest.mark.parametrize("reward", ["world-artifact-boxes", "world-safety-decision"])
def test_eval_with_a_score_only_reward_config(tmp_path, reward):
    """A run trained with a score-only reward is evaluated with its own config: boxes give the masks, a
    yes/no judge (no heatmap) gives M = 0, so "outside the mask" is the whole image."""
    from focusnfix.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--config", str(ROOT / "configs" / "world-artifact-grpo.yaml"),
                 "--set", f"reward.name={reward}", "--set", "sampler.steps=2", "--set", "grpo.timesteps=2",  # <= T
                 "--methods", "base",
                 "--prompts", "world:val", "--limit", "2", "--seeds", "0", "--out", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all((out / r["mask"]).is_file() for r in rows)
    if reward == "world-safety-decision":
        assert all(r["outside_mae"] == 0.0 and r["inside_mae"] is None for r in rows), rows


def test_score_only_reward_makes_region_grpo_plain_grpo(tiny_dir, tmp_path):
    """docs/grpo.md: a score-only reward gives M = 1, so nothing lies outside the mask: no KL whatever
    grpo.kl_weight, and with objective.budget an outside change of 0 (no extra rollout); the loss and gradient are
    plain GRPO's (1e-6, as the M = 1 reduction above). A perturbed LoRA, so that mu_theta != mu_ref and a KL over
    the whole image would be non-zero."""
    from conftest import perturb_lora

    for extra in ({"grpo.kl_weight": 10.0}, {"objective.budget": 0.5}):
        cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run", **{
            "method": "fnf-grpo", "grpo.group_size": 2, "sampler.steps": 3, **extra}))
        t = Trainer(cfg, reward=ScoreOnly())
        perturb_lora(t.backbone.unet)
        batch = make_batches(t.cfg, t.prompts, 0)[0]
        plain_loss, plain_grad, _ = _loss_and_grad(t, GRPO(t.backbone, t.reward, t.cfg), batch)
        region = RegionGRPO(t.backbone, t.reward, t.cfg)
        if "objective.budget" in extra:
            region.budget.lam = 3.0  # a multiplier that would weigh a KL, were there one
        loss, grad, logs = _loss_and_grad(t, region, batch)
        assert logs["mask_frac"] == 1.0 and logs["kl_outside"] == 0.0, logs
        assert abs(loss - plain_loss).item() <= 1e-6 * max(1.0, abs(plain_loss).item())
        assert (grad - plain_grad).abs().max().item() <= 1e-6 * plain_grad.abs().max().item() + 1e-12
        if "objective.budget" in extra:
            assert logs["outside_change"] == 0.0


def test_eta_ddim_is_finite_on_a_zero_snr_trailing_schedule():
    """SD 2.x zero terminal SNR (rescaled betas, alpha-bar = 0 at t = 999) with trailing timesteps, eta = 1: at the
    first step sigma^2 = 1 - a_prev exactly, and float32 rounded the direction term's 1 - a_prev - sigma^2 to about
    -6e-8 for 25 of the step counts 2..50, so its square root made the mean (and every later step) NaN. Clamped at 0,
    every step count gives finite, positive stds and finite means and log-probs. At the first step the direction
    term is sqrt(rounding) <= sqrt(1e-6) = 1e-3 times eps (= x_T for v-prediction at alpha-bar 0): the mean is
    sqrt(a_prev) * x0 to within 1e-3 |x_T|."""
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
                              set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    gen = torch.Generator().manual_seed(0)
    for steps in range(2, 51):
        rule = StochasticDDIMStep(scheduler, 1.0, steps, torch.device("cpu"))
        x = torch.randn((2, 4, 8, 8), generator=gen)
        for i, t in enumerate(rule.timesteps):
            out = torch.randn(x.shape, generator=gen)  # a model's v
            mean, std = rule.mean(out, i, t, x), rule.std(i, t)
            if i == 0:
                assert rule.scheduler.alphas_cumprod[int(t)].item() == 0.0
                a_prev = rule.scheduler.alphas_cumprod[int(t) - 1000 // steps]
                assert (mean - a_prev.sqrt() * -out).abs().max().item() <= 1e-3 * x.abs().max().item(), steps
            x_next = mean + std * torch.randn(x.shape, generator=gen)
            log_prob = gaussian_log_prob(x_next, mean, std)
            assert bool(torch.isfinite(std)) and std.item() > 0, (steps, i, std)
            assert bool(torch.isfinite(mean).all() and torch.isfinite(log_prob).all()), (steps, i)
            x = x_next
