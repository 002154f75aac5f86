"""Flow-matching transformers (SD3/3.5, FLUX.1): the Euler step rule reproduces the diffusers pipelines
as diffusers builds them, and Focus-N-Fix trains, saves, reloads and resumes as on the UNet families."""
import pytest
import torch
from conftest import base_overrides
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from focusnfix.backbones import FluxBackbone, SD3Backbone, load_backbone
from focusnfix.config import load_config
from focusnfix.backbones.lora import lora_state
from focusnfix.sampling import generate
from focusnfix.training.trainer import Trainer

PROMPTS, SEEDS = ["a red circle", "a blue square"], [3, 11]
# Same float32 modules on both sides; only the order of a few operations may differ: 1e-4 on [0, 1]
# images is ~1000 ulps of 1.0 (measured: 0, identical operations), while a wrong sigma schedule or shift
# moves pixels by more than 1e-2 (checked below).
TOL = 1e-4


def _pipe(cls, path):
    pipe = cls.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gap(ours, theirs) -> float:
    return (ours - theirs).abs().max().item()


@pytest.mark.parametrize("steps", [3, 6])
@pytest.mark.parametrize("height,width", [(48, 32), (32, 64)])
@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_sd3_sampler_matches_pipeline(tiny_sd3_dir, steps, height, width, guidance):
    backbone = load_backbone(str(tiny_sd3_dir), height=height, width=width)
    assert isinstance(backbone, SD3Backbone)
    ours = generate(backbone, PROMPTS, SEEDS, steps=steps, guidance_scale=guidance)
    theirs = _pipe(StableDiffusion3Pipeline, tiny_sd3_dir)(
        PROMPTS, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
        latents=backbone.initial_noise(SEEDS), output_type="pt").images
    assert ours.shape == (2, 3, height, width) and ours.std() > 0.01
    assert _gap(ours, theirs) <= TOL


def test_sd3_non_default_shift(tmp_path):
    from focusnfix.backbones.tiny_flow import build_tiny_sd3_pipeline

    build_tiny_sd3_pipeline(tmp_path / "shift", shift=1.5)
    backbone = load_backbone(str(tmp_path / "shift"), height=32, width=48)
    assert backbone.scheduler.config.shift == 1.5
    ours = generate(backbone, PROMPTS, SEEDS, steps=4, guidance_scale=3.0)
    pipe = _pipe(StableDiffusion3Pipeline, tmp_path / "shift")
    theirs = pipe(PROMPTS, height=32, width=48, num_inference_steps=4, guidance_scale=3.0,
                  latents=backbone.initial_noise(SEEDS), output_type="pt").images
    assert _gap(ours, theirs) <= TOL
    # a wrong schedule is caught
    backbone.scheduler = backbone.scheduler.from_config(backbone.scheduler.config, shift=3.0)
    assert _gap(generate(backbone, PROMPTS, SEEDS, steps=4, guidance_scale=3.0), theirs) > 1e-2


@pytest.mark.parametrize("steps", [3, 6])
@pytest.mark.parametrize("height,width", [(48, 32), (32, 64)])
def test_flux_sampler_matches_pipeline(tiny_flux_dir, steps, height, width):
    """Packed latents, image ids, the distilled guidance input and the dynamic (resolution-dependent) shift."""
    backbone = load_backbone(str(tiny_flux_dir), height=height, width=width)
    assert isinstance(backbone, FluxBackbone)
    noise = backbone.initial_noise(SEEDS)
    assert noise.shape == (2, (height // 8) * (width // 8), 16)  # 2x2 patches of 4 latent channels
    ours = generate(backbone, PROMPTS, SEEDS, steps=steps, guidance_scale=3.5)
    theirs = _pipe(FluxPipeline, tiny_flux_dir)(PROMPTS, height=height, width=width, num_inference_steps=steps,
                                                guidance_scale=3.5, latents=noise, output_type="pt").images
    assert ours.shape == (2, 3, height, width) and ours.std() > 0.01
    assert _gap(ours, theirs) <= TOL


def test_flux_rejects_negative_prompt_and_bad_size(tiny_flux_dir):
    from focusnfix.errors import FocusNFixError

    backbone = load_backbone(str(tiny_flux_dir), resolution=32)
    with pytest.raises(FocusNFixError, match="negative prompts"):
        backbone.encode(PROMPTS, "blurry", 3.5)
    with pytest.raises(FocusNFixError, match="not divisible by 8"):
        load_backbone(str(tiny_flux_dir), height=36, width=32)


FAMILIES = [("tiny_sd3_dir", StableDiffusion3Pipeline, {"sampler.guidance_scale": 3.0}),
            ("tiny_flux_dir", FluxPipeline, {"sampler.guidance_scale": 3.5, "model.resolution": 32})]


def _overrides(path, out, extra, **more):
    return base_overrides(path, out, **{"sampler.height": 48, **extra, **more})


def _dead_lora(trainer) -> set[str]:
    """LoRA tensors with no influence on the image: SD3's last joint block keeps only its image stream
    (context_pre_only), so the text-stream query projection there feeds nothing."""
    last = max(int(n.split(".")[1]) for n in lora_state(trainer.backbone.unet) if n.startswith("transformer_blocks."))
    if isinstance(trainer.backbone, FluxBackbone):
        return set()
    return {n for n in lora_state(trainer.backbone.unet) if n.startswith(f"transformer_blocks.{last}.attn.add_q_proj.")}


@pytest.mark.parametrize("fixture,cls,extra", FAMILIES, ids=["sd3", "flux"])
def test_two_steps_train_every_live_lora_tensor_and_reload_in_diffusers(request, tmp_path, fixture, cls, extra):
    path = request.getfixturevalue(fixture)
    trainer = Trainer(load_config(None, _overrides(path, tmp_path / "run", extra)))
    unet = trainer.backbone.unet
    base_before = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}
    lora_before = lora_state(unet)
    run = trainer.train(progress=False)  # train.steps = 2, then lora/
    lora_after = lora_state(unet)
    dead = _dead_lora(trainer)
    assert {n for n in lora_before if torch.equal(lora_before[n], lora_after[n])} == dead
    assert all(torch.equal(base_before[n], p) for n, p in unet.named_parameters() if n in base_before)
    g = trainer.cfg.sampler.guidance_scale
    ours = generate(trainer.backbone, PROMPTS, SEEDS, steps=4, guidance_scale=g)
    pipe = _pipe(cls, path)
    # offline, diffusers < 0.42 needs the name
    pipe.load_lora_weights(run / "lora", weight_name="pytorch_lora_weights.safetensors")
    theirs = pipe(PROMPTS, height=48, width=32, num_inference_steps=4, guidance_scale=g,
                  latents=trainer.backbone.initial_noise(SEEDS), output_type="pt").images
    assert _gap(ours, theirs) <= TOL
    # `focusnfix sample --lora` (fused and not) writes the same images within one 8-bit level
    from focusnfix.cli import main
    from focusnfix.evaluation.runner import _load_png

    for fuse in ([], ["--fuse"]):
        out = tmp_path / f"sample{len(fuse)}"
        argv = ["sample", "--model", str(path), "--lora", str(run / "lora"), "--prompt", PROMPTS[0],
                "--seeds", *map(str, SEEDS), "--steps", "4", "--guidance-scale", str(g), "--height", "48",
                "--width", "32", "--out", str(out), "--no-progress"]
        assert main(argv + fuse) == 0
        for j, seed in enumerate(SEEDS):
            png = _load_png(next(out.glob(f"*-seed{seed}.png")))
            ref = pipe(PROMPTS[:1], height=48, width=32, num_inference_steps=4, guidance_scale=g,
                       latents=trainer.backbone.initial_noise([seed]), output_type="pt").images[0]
            assert _gap(png, ref) <= 1 / 255 + 1e-6, (fuse, seed)


@pytest.mark.parametrize("fixture,cls,extra", FAMILIES, ids=["sd3", "flux"])
def test_lambda_zero_equals_draft_bit_for_bit(request, tmp_path, fixture, cls, extra):
    path = request.getfixturevalue(fixture)
    states = []
    for method, lam in (("fnf", 0.0), ("draft", 1.0)):
        trainer = Trainer(load_config(None, _overrides(path, tmp_path / method, extra,
                                                       **{"method": method, "objective.lam": lam})))
        for _ in range(2):
            trainer.train_step()
        states.append(lora_state(trainer.backbone.unet))
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])


def test_sd3_resume_equals_uninterrupted(tiny_sd3_dir, tmp_path):
    extra = {"sampler.guidance_scale": 3.0, "train.steps": 4, "train.checkpoint_every": 2}
    straight = Trainer(load_config(None, _overrides(tiny_sd3_dir, tmp_path / "a", extra)))
    straight.train(progress=False)
    interrupted = Trainer(load_config(None, _overrides(tiny_sd3_dir, tmp_path / "b", extra)))
    interrupted.out.mkdir(parents=True)
    for _ in range(2):
        interrupted.train_step()
    interrupted.save_checkpoint()
    del interrupted
    resumed = Trainer(load_config(None, _overrides(tiny_sd3_dir, tmp_path / "b", extra)))
    resumed.train(resume=True, progress=False)
    a, b = lora_state(straight.backbone.unet), lora_state(resumed.backbone.unet)
    # the same operations on the same inputs after the checkpoint (no reference-cache hits without a
    # seed pool), so the runs agree far below 1e-6
    assert max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-6


def test_sd3_fsdp_two_processes_match_one_process(tiny_sd3_dir, tmp_path):
    """train.fsdp shards the transformer's joint blocks (and the root) over two gloo ranks: each holds
    half the weights, and the LoRA equals one process with the same global batch. Tolerance reasoning as
    in test_distributed.py's UNet test: sharded weights round differently (gradients equal to ~1e-6
    relative); with adam_eps 1e-4, Adam amplifies a gradient difference at most lr / eps = 100-fold, so
    1e-4 holds on any CPU kernel while a lost rank's gradient is off by O(lr) = 1e-2; the LoRA moves by > 1e-2."""
    from safetensors.torch import load_file
    from test_distributed import torchrun

    out = tmp_path / "fsdp"
    common = {"sampler.guidance_scale": 3.0, "train.batch_size": 1, "train.cpu": True, "train.steps": 2,
              "train.adam_eps": 1e-4}
    torchrun(base_overrides(tiny_sd3_dir, out, **common, **{"train.fsdp": True}), tmp_path)
    import json

    for r in (0, 1):
        counts = json.loads((out / f"rank{r}.json").read_text())
        assert counts["held"] <= 0.51 * counts["total"], counts
    ranks = [load_file(out / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(ranks[0][n].equal(ranks[1][n]) for n in ranks[0])
    single = Trainer(load_config(None, base_overrides(tiny_sd3_dir, tmp_path / "single", **common,
                                                      **{"train.grad_accum": 2})))
    single.train(progress=False)
    ref = lora_state(single.backbone.unet)
    assert max(ref[n].abs().max().item() for n in ref if "lora_B" in n) > 1e-2
    assert max((ref[n] - ranks[0][n]).abs().max().item() for n in ref) <= 1e-4


def test_flow_bad_input_is_one_line_exit_2(tiny_flux_dir, tiny_sd3_dir, tiny_dir, tmp_path, capsys):
    """A FLUX folder without its transformer, a UNet LoRA given to an SD3 model, K > T."""
    import shutil

    from focusnfix.cli import main

    broken = tmp_path / "flux"
    shutil.copytree(tiny_flux_dir, broken)
    shutil.rmtree(broken / "transformer")
    unet_lora = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "sd-run",
                                                         **{"train.steps": 1}))).train(progress=False) / "lora"
    capsys.readouterr()
    cases = {
        "lacks transformer/": ["sample", "--model", str(broken), "--prompt", "a red circle",
                               "--out", str(tmp_path / "o1")],
        "was it trained for another model family": ["sample", "--model", str(tiny_sd3_dir), "--lora", str(unet_lora),
                                                    "--prompt", "a red circle", "--out", str(tmp_path / "o2")],
        "1 <= K <= T": ["train", *base_overrides(tiny_sd3_dir, tmp_path / "r3", **{"sampler.k": 5})],
    }
    for expected, argv in cases.items():
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and len(err[0]) < 300, err


@pytest.mark.parametrize("fixture", ["tiny_sd3_dir", "tiny_flux_dir"])
def test_reward_guidance_on_flow_models(request, fixture):
    """x̂0 = x - σ v and its inverse v = (x - x̂0) / σ; scale 0 reproduces the sampler exactly, a positive
    scale raises the reward (the colour reward: redder images), the region variant only moves masked latents."""
    from focusnfix.methods.reward_guidance import RewardGuidance
    from focusnfix.rewards.registry import build_reward

    backbone = load_backbone(str(request.getfixturevalue(fixture)), resolution=32)
    rule = backbone.step_rule(4, backbone.device)
    x, v = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    assert torch.allclose(rule.output_for(rule.x0(v, 1, None, x), 1, None, x), v, atol=1e-5)
    reward = build_reward("color")
    plain = generate(backbone, PROMPTS, SEEDS, steps=4, guidance_scale=3.0)
    zero = generate(backbone, PROMPTS, SEEDS, steps=4, guidance_scale=3.0,
                    guidance=RewardGuidance(backbone, reward, PROMPTS, scale=0.0, steps=4))
    assert torch.equal(plain, zero)
    guided = generate(backbone, PROMPTS, SEEDS, steps=4, guidance_scale=3.0,
                      guidance=RewardGuidance(backbone, reward, PROMPTS, scale=20.0, steps=4))
    assert (reward(guided).score > reward(plain).score).all()
    regions = []
    for rows in (0, 16):  # an empty mask: no guidance anywhere; the top half flagged: guidance there
        mask = torch.zeros(2, 1, 32, 32)
        mask[..., :rows, :] = 1.0
        regions.append(generate(backbone, PROMPTS, SEEDS, steps=4, guidance_scale=3.0, guidance=RewardGuidance(
            backbone, reward, PROMPTS, scale=20.0, steps=4, mask=mask)))
    # an empty mask leaves x̂0 as it was; v is rebuilt from it, equal up to float rounding (σ >= 0.25 here)
    assert _gap(regions[0], plain) <= 1e-4 and _gap(regions[1], plain) > 1e-3


def test_sld_refuses_flow_models(tiny_sd3_dir):
    from focusnfix.errors import FocusNFixError
    from focusnfix.methods.sld import SLDGuidance

    with pytest.raises(FocusNFixError, match="UNet families"):
        SLDGuidance(load_backbone(str(tiny_sd3_dir)), "medium")
