"""LoRA training: what changes, the objective's identities, diffusers round trip, exact resume."""
import json

import pytest
import torch
from conftest import base_overrides, interrupted_then_resumed
from diffusers import StableDiffusionPipeline

from focusnfix.config import load_config
from focusnfix.backbones.lora import adapters_disabled, lora_state
from focusnfix.methods import DRaFT, FocusNFix
from focusnfix.methods.objective import fnf_loss, region_constraint
from focusnfix.sampling import generate
from focusnfix.training.trainer import Trainer, make_batches


def test_two_steps_change_every_lora_param_and_no_base_param(tiny_dir, tmp_path):
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run"))
    trainer = Trainer(cfg)
    unet = trainer.backbone.unet
    base_before = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}
    text_before = {n: p.detach().clone() for n, p in trainer.backbone.text_encoder.named_parameters()}
    vae_before = {n: p.detach().clone() for n, p in trainer.backbone.vae.named_parameters()}
    lora_before = lora_state(unet)
    assert len(lora_before) > 0
    trainer.train_step()
    trainer.train_step()
    lora_after = lora_state(unet)
    unchanged = [n for n in lora_before if torch.equal(lora_before[n], lora_after[n])]
    assert unchanged == []
    for before, module in ((base_before, unet), (text_before, trainer.backbone.text_encoder),
                           (vae_before, trainer.backbone.vae)):
        params = dict(module.named_parameters())
        assert all(torch.equal(before[n], params[n]) for n in before)
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable == set(lora_before)


def test_lambda_zero_is_exactly_draft_and_constraint_adds_up(tiny_dir, tmp_path):
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run", **{"objective.lam": 0.0}))
    trainer = Trainer(cfg)
    with torch.no_grad():  # a non-trivial LoRA so I != I0
        for p in trainer.params:
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batches(cfg, trainer.prompts, 0)[0]
    fnf0, _ = FocusNFix(trainer.backbone, trainer.reward, cfg).loss(batch)
    draft, logs = DRaFT(trainer.backbone, trainer.reward, cfg).loss(batch)
    images = trainer.method.trained_images(batch.prompts, batch.seeds, batch.k)
    assert torch.equal(fnf0, draft)
    assert torch.equal(draft, -trainer.reward(images, batch.prompts).score.mean())

    cfg.objective.lam = 2.5
    fnf = FocusNFix(trainer.backbone, trainer.reward, cfg)
    loss, logs = fnf.loss(batch)
    ref = fnf.reference(batch.prompts, batch.seeds)
    manual = -trainer.reward(images, batch.prompts).score + 2.5 * region_constraint(images, ref.images, ref.mask)
    assert logs["constraint"] > 0
    # `loss` took Î from the batched reference pass (UNet batches of 4 rows), `images` from a 2-row pass:
    # equal up to rounding (<= 2e-6 per pixel, test_cache); through the norm over 3 x 32 x 32 pixels and
    # lam = 2.5 that bounds the difference by 2.5 * sqrt(3072) * 2e-6 = 3e-4, 5e-5 of the loss (~5):
    # rtol 1e-4 (measured <= 2e-6). A wrong lam, norm or mean changes the loss by order 1.
    assert torch.allclose(loss, manual.mean(), rtol=1e-4, atol=0.0)


def test_all_ones_mask_gives_zero_constraint():
    images, ref = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert torch.equal(region_constraint(images, ref, torch.ones(2, 1, 16, 16)), torch.zeros(2))
    zeros = region_constraint(images, ref, torch.zeros(2, 1, 16, 16))
    assert torch.allclose(zeros, (images - ref).flatten(1).norm(dim=1))
    rms = region_constraint(images, ref, torch.zeros(2, 1, 16, 16), norm="rms")
    assert torch.allclose(rms, (images - ref).pow(2).flatten(1).mean(1).sqrt())
    score = torch.tensor([0.2, 0.4])
    assert torch.equal(fnf_loss(score, torch.tensor([1.0, 3.0]), 0.0), -score.mean())


def test_adapters_disabled_reproduce_base_model(tiny_dir, tmp_path):
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run"))
    trainer = Trainer(cfg)
    base = generate(trainer.backbone, ["a red circle"], [5], steps=4)
    with torch.no_grad():
        for p in trainer.params:
            p.add_(0.1 * torch.randn_like(p))
    tuned = generate(trainer.backbone, ["a red circle"], [5], steps=4)
    with adapters_disabled(trainer.backbone.unet):
        disabled = generate(trainer.backbone, ["a red circle"], [5], steps=4)
    assert (tuned - base).abs().max() > 1e-3
    assert torch.equal(disabled, base)


def test_saved_lora_loads_in_diffusers_with_same_images(tiny_dir, tmp_path):
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run", **{"train.steps": 3, "lora.alpha": 4}))
    trainer = Trainer(cfg)
    run = trainer.train(progress=False)
    ours = generate(trainer.backbone, ["a blue square", "a red circle"], [1, 2], steps=6, guidance_scale=5.0)
    meta = json.loads((run / "lora" / "lora_config.json").read_text())
    assert meta["r"] == 2 and meta["lora_alpha"] == 4
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    before = pipe(["a blue square", "a red circle"], num_inference_steps=6, guidance_scale=5.0,
                  latents=trainer.backbone.initial_noise([1, 2]), output_type="pt").images
    # offline, diffusers < 0.42 needs the name
    pipe.load_lora_weights(run / "lora", weight_name="pytorch_lora_weights.safetensors")
    theirs = pipe(["a blue square", "a red circle"], num_inference_steps=6, guidance_scale=5.0,
                  latents=trainer.backbone.initial_noise([1, 2]), output_type="pt").images
    assert (ours - before).abs().max() > 1e-3  # training changed the model
    assert (ours - theirs).abs().max() <= 1e-4


@pytest.mark.parametrize("schedule", ["cosine"])
def test_resume_continues_the_same_trajectory(tiny_dir, tmp_path, schedule):
    extra = {"train.steps": 6, "train.lr_schedule": schedule, "train.warmup_steps": 1, "train.checkpoint_every": 3,
             "train.grad_accum": 2, "sampler.k_max": 3}
    straight = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "a", **extra)))
    straight.train(progress=False)

    resumed = interrupted_then_resumed(tiny_dir, tmp_path / "b", 3, **extra)

    a, b = lora_state(straight.backbone.unet), lora_state(resumed.backbone.unet)
    assert max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-6
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 5, 6]


def test_run_folder_contents(tiny_dir, tmp_path):
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run", **{"train.sample_every": 1}))
    run = Trainer(cfg).train(progress=False)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "lora/pytorch_lora_weights.safetensors",
                 "samples/step-000001.png", "samples/final.png"):
        assert (run / name).is_file(), name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("reward" in r and "constraint" in r for r in rows)
    assert load_config(run / "config.yaml").train.steps == 2  # the saved config reloads
    assert not list(run.rglob(".tmp-*"))


# Two training paths that do the same float32 arithmetic in another order (other UNet batch sizes,
# another attention kernel, recomputation) are compared by the gradient of one optimizer step, never by
# weights after Adam steps: Adam divides each element by its own sqrt(v), so an element whose gradient is
# near 0 turns a last-bit rounding difference into an O(lr) weight difference (4e-5 .. 1.1e-4 after two
# steps at lr 1e-2, depending on the CPU's kernels: such checks failed on other x86-64 CPUs).
# GRAD_RTOL bounds the relative L2 gap ||g_a - g_b|| / ||g_a||: each of the few hundred float32 ops in
# sequence (T = 4 UNet calls and the VAE decoder forward, K = 2 of them and the decoder backward) may
# round a few ulps (eps = 1.2e-7) differently: ~1e3 eps = 1e-4. Measured <= 3e-6 with AVX-512, AVX2
# and default ATen kernels and oneDNN down to SSE4.1. A real bug is of order 1 (see each test).
GRAD_RTOL = 1e-4


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def _step_gradient(tiny_dir, out, **extra):
    """The LoRA gradient of optimizer step 1 as the optimizer receives it (all micro-batches accumulated,
    each divided by train.grad_accum; before clipping), flattened.

    From a fixed LoRA well away from its init: at B = 0 every lora_A gradient is exactly 0, and Î equals
    Î0, where ‖(1 − M)(Î − Î0)‖ is not differentiable and rounding noise picks its gradient (test_compile).
    The constraint's gradient is (Î − Î0) / ‖…‖, whose relative rounding error is the images' (~1e-6)
    over |Î − Î0|: with LoRA entries of 0.05 (|Î − Î0| ~ 7e-3) that made gaps up to 7e-5; at 0.2 they
    are <= 7e-6."""
    trainer = Trainer(load_config(None, base_overrides(tiny_dir, out, **extra)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.params:
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    trainer.accumulate_gradients()
    return torch.cat([p.grad.flatten() for p in trainer.params])


def test_accumulation_invariance(tiny_dir, tmp_path):
    """Batch 2 x 1 accumulation == batch 1 x 2 accumulation (same trajectories, same gradient), with the
    reference pass run separately and batched with the trained pass (UNet batches of 4 and 2 rows).

    Within GRAD_RTOL = 1e-4 (measured <= 2.2e-6 over CPU kernels); a missing or doubled division by
    train.grad_accum gives a gap of 1 or 0.5, a lost micro-batch one of order 0.5: 5000x the tolerance."""
    for batched in (False, True):
        a = _step_gradient(tiny_dir, tmp_path / f"a{batched}",
                           **{"train.batch_size": 2, "train.grad_accum": 1, "train.batch_reference": batched})
        b = _step_gradient(tiny_dir, tmp_path / f"b{batched}",
                           **{"train.batch_size": 1, "train.grad_accum": 2, "train.batch_reference": batched})
        assert a.norm() > 0 and _relative_gap(a, b) <= GRAD_RTOL, (batched, _relative_gap(a, b))


def test_gradient_checkpointing_gives_the_same_training(tiny_dir, tmp_path):
    """Checkpointing recomputes the same ops on the same inputs: the gradient is equal (bit for bit with
    every CPU kernel measured) and within GRAD_RTOL wherever a recomputation rounds otherwise; a block
    left out of the recomputed graph or recomputed with other weights changes it by order 1."""
    a = _step_gradient(tiny_dir, tmp_path / "a")
    b = _step_gradient(tiny_dir, tmp_path / "b",
                       **{"sampler.grad_checkpointing": True, "sampler.vae_checkpointing": True})
    assert a.norm() > 0 and _relative_gap(a, b) <= GRAD_RTOL, _relative_gap(a, b)


def _first_gradient(tiny_dir, out, precision):
    """The unscaled LoRA gradient of one micro-batch under ``train.mixed_precision=precision``, flattened."""
    trainer = Trainer(load_config(None, base_overrides(tiny_dir, out, **{"train.mixed_precision": precision})))
    with trainer.autocast():
        loss, _ = trainer.method.loss(make_batches(trainer.cfg, trainer.prompts, 0)[0])
    trainer.scaler.scale(loss).backward()
    trainer.scaler.unscale_(trainer.optimizer)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in trainer.params)
    return torch.cat([p.grad.flatten() for p in trainer.params])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_gradient_follows_float32(tiny_dir, tmp_path, precision):
    """Autocast really runs (the gradient differs from float32) and stays close (cosine >= 0.99,
    norm within 5 %); fp16 goes through the loss scaler and is unscaled before use."""
    ref = _first_gradient(tiny_dir, tmp_path / "fp32", "no")
    low = _first_gradient(tiny_dir, tmp_path / precision, precision)
    assert not torch.equal(ref, low)
    assert torch.nn.functional.cosine_similarity(ref, low, dim=0) >= 0.99
    assert abs(low.norm() / ref.norm() - 1) <= 0.05


def test_fp16_overflow_backs_off_the_loss_scale_without_counting_as_divergence(tiny_dir, tmp_path):
    """A loss scale far too large overflows fp16: those steps are skipped and the scale halves each
    time (not counted toward train.max_bad_steps=3); then training proceeds and the scale is resumed."""
    out = tmp_path / "run"
    trainer = Trainer(load_config(None, base_overrides(tiny_dir, out,
                                                       **{"train.mixed_precision": "fp16", "train.steps": 8})))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**28)  # here gradients fit from about 2**24
    logs = [trainer.train_step() for _ in range(8)]
    skipped = [entry["skipped"] for entry in logs]
    # more than max_bad_steps=3 skips in a row, yet no TrainingDiverged
    assert skipped[:4] == [1.0] * 4 and 0.0 in skipped
    assert [entry["loss_scale"] for entry in logs[:3]] == [2.0**28, 2.0**27, 2.0**26]
    assert all(torch.isfinite(torch.tensor(entry["grad_norm"])) for entry, s in zip(logs, skipped) if not s)
    trainer.save_checkpoint()
    resumed = Trainer(load_config(None, base_overrides(tiny_dir, out,
                                                       **{"train.mixed_precision": "fp16", "train.steps": 8})))
    assert resumed.resume() and resumed.scaler.get_scale() == trainer.scaler.get_scale()


def test_attention_implementations_agree(tiny_dir, tmp_path):
    """model.attention=sdpa and eager are different processors (checked, so the comparison is not of a
    model with itself; `default` is diffusers' choice, sdpa here) with the same images and training."""
    from focusnfix.backbones import load_backbone

    backbones = {a: load_backbone(str(tiny_dir), attention=a) for a in ("sdpa", "eager")}
    kinds = {a: {type(p).__name__ for p in bb.unet.attn_processors.values()} for a, bb in backbones.items()}
    assert kinds["sdpa"].isdisjoint(kinds["eager"]), kinds
    sdpa, eager = (generate(bb, ["a red circle"], [3], steps=4) for bb in backbones.values())
    # sdpa's fused softmax vs eager's baddbmm + softmax: the same float32 math in another order, a few
    # ulps per op through 4 UNet calls and the decoder, up to ~1e3 eps = 1e-4 on [0, 1] images (measured
    # <= 1.8e-6 over AVX-512, AVX2 and default kernels); an attention scale 10 % off moves pixels by 7e-3
    assert (sdpa - eager).abs().max().item() <= 1e-4
    a = _step_gradient(tiny_dir, tmp_path / "a", **{"model.attention": "sdpa"})
    b = _step_gradient(tiny_dir, tmp_path / "b", **{"model.attention": "eager"})
    assert a.norm() > 0 and _relative_gap(a, b) <= GRAD_RTOL, _relative_gap(a, b)  # measured <= 2.8e-6


def test_methods_come_from_one_catalogue(tiny_dir, tmp_path):
    """config/methods.py names each training method once: the class the trainer builds (given what it needs when
    built), the names config validation accepts, the `method` help and the model card's sentence."""
    from focusnfix.config import field_help
    from focusnfix.config.methods import METHODS as CATALOGUE
    from focusnfix.errors import ConfigError
    from focusnfix.methods import METHODS
    from focusnfix.runs.modelcard import METHODS as CARDS

    assert list(METHODS) == list(CATALOGUE) == list(CARDS) == ["fnf", "draft", "grpo", "fnf-grpo"]
    assert METHODS["fnf"] is FocusNFix and METHODS["draft"] is DRaFT
    with pytest.raises(ConfigError, match=r"^method must be fnf, draft, grpo or fnf-grpo, got 'x'$"):
        load_config(None, base_overrides(tiny_dir, tmp_path / "x", method="x"))
    help_text = {key: text for key, _, text in field_help()}["method"]
    assert all(name in help_text for name in CATALOGUE) and "grpo.kl_weight" in help_text
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "d", method="draft", **{"data.seed_pool": 2}))
    draft = Trainer(cfg)
    assert isinstance(draft.method, DRaFT) and draft.method.cache is None  # no reference: no cache built
    assert draft.method.lockstep is None and draft.method.batch_reference is True
