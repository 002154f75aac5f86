"""Inference-time baselines through the one sampler: SLD (vs diffusers' deprecated pipeline) and
Reward Guidance with and without the region constraint."""
import pytest
import torch

from focusnfix.backbones import load_backbone
from focusnfix.methods.reward_guidance import RewardGuidance
from focusnfix.methods.sld import PRESETS, SLDConfig, SLDGuidance
from focusnfix.rewards import ColorReward
from focusnfix.sampling import generate

PROMPTS, SEEDS = ["a red circle", "a blue square"], [3, 4]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_sld_matches_deprecated_diffusers_pipeline(tiny_dir, preset):
    diffusers = pytest.importorskip("diffusers")
    if not hasattr(diffusers, "StableDiffusionPipelineSafe"):
        pytest.skip("this diffusers no longer ships StableDiffusionPipelineSafe")
    backbone = load_backbone(str(tiny_dir))
    p = backbone.pipe
    safe = diffusers.StableDiffusionPipelineSafe(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer,
                                                 unet=p.unet, scheduler=backbone.scheduler, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)
    safe.set_progress_bar_config(disable=True)
    cfg = PRESETS[preset]
    ours = generate(backbone, PROMPTS, SEEDS, steps=12, guidance_scale=6.0, guidance=SLDGuidance(backbone, preset))
    theirs = safe(PROMPTS, num_inference_steps=12, guidance_scale=6.0, latents=backbone.initial_noise(SEEDS),
                  output_type="np", sld_warmup_steps=cfg.warmup_steps, sld_guidance_scale=cfg.guidance_scale,
                  sld_threshold=cfg.threshold, sld_momentum_scale=cfg.momentum_scale, sld_mom_beta=cfg.mom_beta).images
    base = generate(backbone, PROMPTS, SEEDS, steps=12, guidance_scale=6.0)
    theirs = torch.from_numpy(theirs).permute(0, 3, 1, 2)  # the deprecated pipeline returns NHWC numpy
    assert (ours - theirs).abs().max().item() <= 1e-4
    if preset != "weak":
        assert (ours - base).abs().max() > 1e-3  # SLD changed the images


def test_sld_scale_zero_and_reward_guidance_scale_zero_are_the_base_model(tiny_dir):
    backbone = load_backbone(str(tiny_dir))
    base = generate(backbone, PROMPTS, SEEDS, steps=6, guidance_scale=4.0)
    sld_off = generate(backbone, PROMPTS, SEEDS, steps=6, guidance_scale=4.0,
                       guidance=SLDGuidance(backbone, SLDConfig(guidance_scale=0.0)))
    rg_off = generate(backbone, PROMPTS, SEEDS, steps=6, guidance_scale=4.0,
                      guidance=RewardGuidance(backbone, ColorReward(), PROMPTS, scale=0.0, steps=6))
    assert torch.equal(sld_off, base) and torch.equal(rg_off, base)


@pytest.mark.parametrize("which", ["tiny_dir", "tiny_v_dir"])
def test_reward_guidance_raises_the_reward(request, which):
    backbone = load_backbone(str(request.getfixturevalue(which)))
    reward = ColorReward(color=(1.0, 0.0, 0.0))
    base = generate(backbone, PROMPTS, SEEDS, steps=8, guidance_scale=3.0)
    guided = generate(backbone, PROMPTS, SEEDS, steps=8, guidance_scale=3.0,
                      guidance=RewardGuidance(backbone, reward, PROMPTS, scale=30.0, steps=8))
    assert torch.all(reward(guided).score > reward(base).score)


def test_region_constrained_guidance_changes_less_outside_the_mask(tiny_dir):
    backbone = load_backbone(str(tiny_dir))
    reward = ColorReward(color=(1.0, 0.0, 0.0))
    base = generate(backbone, PROMPTS, SEEDS, steps=8, guidance_scale=3.0)
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., :16, :16] = 1  # constrain the guidance to the top-left quarter
    free = generate(backbone, PROMPTS, SEEDS, steps=8, guidance_scale=3.0,
                    guidance=RewardGuidance(backbone, reward, PROMPTS, scale=300.0, steps=8))
    region = generate(backbone, PROMPTS, SEEDS, steps=8, guidance_scale=3.0,
                      guidance=RewardGuidance(backbone, reward, PROMPTS, scale=300.0, steps=8, mask=mask))

    def change(img, where):
        return ((img - base).abs().mean(1, keepdim=True) * where).sum() / where.sum()

    assert change(region, 1 - mask) < 0.3 * change(free, 1 - mask)
    assert change(region, mask) > 2 * change(region, 1 - mask)
    assert torch.all(reward(region).score > reward(base).score)
