"""The one sampler: equivalence with diffusers' pipeline, and where gradients flow (DRaFT-K)."""
import pytest
import torch
from diffusers import StableDiffusionPipeline

from focusnfix.backbones import load_backbone
from focusnfix.sampling import draw_k, generate, predicted_x0, sample


@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("which", ["tiny_dir", "tiny_v_dir"])
def test_sampler_matches_diffusers_pipeline(request, which, guidance):
    path = request.getfixturevalue(which)
    backbone = load_backbone(str(path))
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    prompts, seeds = ["a red circle", "a blue square"], [3, 11]
    ours = generate(backbone, prompts, seeds, steps=8, guidance_scale=guidance, negative_prompt="blurry")
    theirs = pipe(prompts, num_inference_steps=8, guidance_scale=guidance, negative_prompt=["blurry"] * 2,
                  latents=backbone.initial_noise(seeds), output_type="pt").images
    assert ours.shape == (2, 3, 32, 32)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert ours.std() > 0.01  # not a degenerate constant image


def test_initial_noise_is_deterministic_per_seed(tiny_dir):
    backbone = load_backbone(str(tiny_dir))
    a, b = backbone.initial_noise([1, 2]), backbone.initial_noise([2, 1])
    assert torch.equal(a[0], b[1]) and torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])


def _recording_guidance(record):
    def wrap(model_fn):
        def fn(x, t, cond):
            out = model_fn(x, t, cond)
            record.append(out.requires_grad)
            return out
        return fn
    return wrap


@pytest.mark.parametrize("k", [1, 3])
def test_gradient_only_through_last_k_steps(tiny_dir, k):
    from focusnfix.backbones.lora import add_lora

    backbone = load_backbone(str(tiny_dir))
    params = add_lora(backbone.unet, rank=2)
    with torch.no_grad():  # make B non-zero so every LoRA tensor is on the gradient path
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    cond = backbone.encode(["a red circle"], guidance_scale=3.0)
    noise = backbone.initial_noise([0]).requires_grad_(True)
    record: list[bool] = []
    latents = sample(backbone, cond, noise, steps=5, k=k, guidance=_recording_guidance(record))
    assert record == [False] * (5 - k) + [True] * k
    backbone.decode(latents).mean().backward()
    assert noise.grad is None  # the T-K prefix ran under no_grad: x_T is cut from the graph
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_k_drawn_once_per_trajectory(tiny_dir, tmp_path):
    from conftest import base_overrides
    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer, make_batches

    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run",
                                           **{"sampler.steps": 5, "sampler.k": 1, "sampler.k_max": 4}))
    trainer = Trainer(cfg)
    draws = {make_batches(cfg, trainer.prompts, step)[0].k for step in range(30)}
    assert draws <= {1, 2, 3, 4} and len(draws) >= 3
    assert make_batches(cfg, trainer.prompts, 7) == make_batches(cfg, trainer.prompts, 7)
    for step in range(3):
        batch = make_batches(cfg, trainer.prompts, step)[0]
        record: list[bool] = []
        unet_forward = trainer.backbone.unet.forward

        def spy(*a, **kw):
            out = unet_forward(*a, **kw)
            record.append(torch.is_grad_enabled())
            return out

        trainer.backbone.unet.forward = spy
        try:
            trainer.method.trained_images(batch.prompts, batch.seeds, batch.k)
        finally:
            trainer.backbone.unet.forward = unet_forward
        # one K for the whole trajectory: the gradient-enabled calls are exactly the last K of T
        assert record == [False] * (5 - batch.k) + [True] * batch.k


def test_k_validation():
    assert draw_k(2, None) == 2 and draw_k(2, 2) == 2
    with pytest.raises(ValueError, match="K"):
        sample(None, None, torch.zeros(1), steps=3, k=4)


def test_predicted_x0_inverts_noising(tiny_v_dir):
    backbone = load_backbone(str(tiny_v_dir))
    sched = backbone.scheduler
    x0, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = torch.tensor(500)
    a = sched.alphas_cumprod[t]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    assert torch.allclose(predicted_x0(sched, v, xt, t), x0, atol=1e-4)
