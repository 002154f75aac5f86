"""SDXL and SD 2.x (v-prediction): same sampler, objective and trainer; LoRA files diffusers loads."""
import pytest
import torch
from conftest import base_overrides
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from focusnfix.backbones import SDBackbone, SDXLBackbone, load_backbone
from focusnfix.config import load_config
from focusnfix.backbones.lora import lora_state
from focusnfix.sampling import generate
from focusnfix.training.trainer import Trainer

PROMPTS, SEEDS = ["a red circle", "a blue square"], [7, 8]


def _xl_pipe(path):
    pipe = StableDiffusionXLPipeline.from_pretrained(path, local_files_only=True)
    # our sampler is DDIM (eta = 0); SDXL's Euler config has no clip_sample key, and SDXL latents must not be clipped
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_sdxl_sampler_matches_diffusers(tiny_xl_dir, guidance):
    backbone = load_backbone(str(tiny_xl_dir))
    assert isinstance(backbone, SDXLBackbone)
    ours = generate(backbone, PROMPTS, SEEDS, steps=6, guidance_scale=guidance)
    theirs = _xl_pipe(tiny_xl_dir)(PROMPTS, num_inference_steps=6, guidance_scale=guidance,
                                   latents=backbone.initial_noise(SEEDS), output_type="pt").images
    assert ours.shape == (2, 3, 32, 32) and ours.std() > 0.01
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_sdxl_negative_prompt_matches_diffusers(tiny_xl_dir):
    backbone = load_backbone(str(tiny_xl_dir))
    ours = generate(backbone, PROMPTS, SEEDS, steps=4, guidance_scale=4.0, negative_prompt="blurry")
    theirs = _xl_pipe(tiny_xl_dir)(PROMPTS, num_inference_steps=4, guidance_scale=4.0, negative_prompt=["blurry"] * 2,
                                   latents=backbone.initial_noise(SEEDS), output_type="pt").images
    assert (ours - theirs).abs().max().item() <= 1e-4


def _two_steps_then_reload(path, pipe_loader, tmp_path):
    trainer = Trainer(load_config(None, base_overrides(path, tmp_path / "run")))
    unet = trainer.backbone.unet
    base_before = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}
    lora_before = lora_state(unet)
    run = trainer.train(progress=False)  # train.steps = 2, then saves lora/
    lora_after = lora_state(unet)
    assert all(not torch.equal(lora_before[n], lora_after[n]) for n in lora_before)
    params = dict(unet.named_parameters())
    assert all(torch.equal(base_before[n], params[n]) for n in base_before)
    ours = generate(trainer.backbone, PROMPTS, SEEDS, steps=5, guidance_scale=3.0)
    pipe = pipe_loader(path)
    # offline, diffusers < 0.42 needs the name
    pipe.load_lora_weights(run / "lora", weight_name="pytorch_lora_weights.safetensors")
    theirs = pipe(PROMPTS, num_inference_steps=5, guidance_scale=3.0, latents=trainer.backbone.initial_noise(SEEDS),
                  output_type="pt").images
    assert (ours - theirs).abs().max().item() <= 1e-4
    return trainer


def test_sdxl_focus_n_fix_two_steps_and_diffusers_reload(tiny_xl_dir, tmp_path):
    trainer = _two_steps_then_reload(tiny_xl_dir, _xl_pipe, tmp_path)
    assert isinstance(trainer.backbone, SDXLBackbone)


def test_v_prediction_trains_and_reloads(tiny_v_dir, tmp_path):
    def loader(path):
        return StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False)

    trainer = _two_steps_then_reload(tiny_v_dir, loader, tmp_path)
    assert trainer.backbone.scheduler.config.prediction_type == "v_prediction"
    assert type(trainer.backbone) is SDBackbone


def test_unsupported_pipeline_is_a_clear_error(tiny_dir, tmp_path):
    import json
    import shutil

    from focusnfix.errors import FocusNFixError

    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(FocusNFixError, match="supported pipelines"):
        load_backbone(str(other))
