"""Equivalence with pipelines *as diffusers constructs them*: scheduler conventions the pipeline
constructors fix (``clip_sample``, ``steps_offset``) and non-square images (SD and SDXL)."""
import json
import shutil

import pytest
from conftest import base_overrides
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from focusnfix.backbones import load_backbone
from focusnfix.config import load_config
from focusnfix.evaluation.metrics import change_metrics
from focusnfix.sampling import generate
from focusnfix.training.trainer import Trainer

PROMPTS, SEEDS = ["a red circle", "a blue square"], [3, 11]
# Same float32 arithmetic on both sides up to operation order (diffusers' pipeline vs our loop around
# the same modules): a few ulps per op through ~20 layers and 6 steps; 1e-4 on [0, 1] images is
# ~1000 float32 ulps of 1.0 while a convention bug below moves pixels by > 0.05.
TOL = 1e-4


def _old_sd_folder(tiny_dir, tmp_path):
    """The tiny SD folder with an SD 1.x-era PNDM scheduler config: no ``clip_sample`` key, steps_offset 0."""
    folder = tmp_path / "old-sd"
    shutil.copytree(tiny_dir, folder)
    config = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": False,
              "skip_prk_steps": True, "steps_offset": 0}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "PNDMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder, config


def _sd_pipe(folder, scheduler):
    """``StableDiffusionPipeline`` built by its own constructor from components (which fixes scheduler configs)."""
    parts = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False).components
    pipe = StableDiffusionPipeline(**{**parts, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_ddim_conventions_match_a_pipeline_diffusers_constructs(tiny_dir, tmp_path):
    folder, raw = _old_sd_folder(tiny_dir, tmp_path)
    backbone = load_backbone(str(folder))
    assert backbone.scheduler.config.clip_sample is False and backbone.scheduler.config.steps_offset == 1
    # the user's DDIM from the raw config has clip_sample=True and steps_offset=0; the constructor fixes both
    pipe = _sd_pipe(folder, DDIMScheduler.from_config(raw))
    assert pipe.scheduler.config.clip_sample is False
    noise = backbone.initial_noise(SEEDS)
    ours = generate(backbone, PROMPTS, SEEDS, steps=6, guidance_scale=5.0)
    theirs = pipe(PROMPTS, num_inference_steps=6, guidance_scale=5.0, latents=noise, output_type="pt").images
    assert (ours - theirs).abs().max().item() <= TOL
    # the test can fail: a sampler that keeps DDIM's defaults (clipping x0 to [-1, 1]) differs by far more
    backbone.scheduler = DDIMScheduler.from_config(raw)
    clipped = generate(backbone, PROMPTS, SEEDS, steps=6, guidance_scale=5.0)
    assert (clipped - theirs).abs().max().item() > 0.05


def _xl_pipe(path):
    """SDXL's constructor fixes no scheduler setting; DDIM on SDXL latents must not clip, so it is given explicitly."""
    pipe = StableDiffusionXLPipeline.from_pretrained(path, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_ddim_never_clips(tiny_xl_dir):
    backbone = load_backbone(str(tiny_xl_dir))  # its Euler scheduler config has no clip_sample key
    assert backbone.scheduler.config.clip_sample is False


@pytest.mark.parametrize("height,width", [(48, 32), (32, 64)])
def test_non_square_sd_matches_diffusers(tiny_dir, height, width):
    backbone = load_backbone(str(tiny_dir), height=height, width=width)
    pipe = _sd_pipe(tiny_dir, DDIMScheduler.from_config(backbone.pipe.scheduler.config))
    noise = backbone.initial_noise(SEEDS)
    assert noise.shape == (2, 4, height // 4, width // 4)  # tiny VAE factor 4
    ours = generate(backbone, PROMPTS, SEEDS, steps=5, guidance_scale=4.0)
    theirs = pipe(PROMPTS, height=height, width=width, num_inference_steps=5, guidance_scale=4.0, latents=noise,
                  output_type="pt").images
    assert ours.shape == (2, 3, height, width)
    assert (ours - theirs).abs().max().item() <= TOL


@pytest.mark.parametrize("height,width", [(48, 32), (32, 64)])
def test_non_square_sdxl_matches_diffusers_with_time_ids(tiny_xl_dir, height, width):
    backbone = load_backbone(str(tiny_xl_dir), height=height, width=width)
    assert backbone.time_ids(1).tolist() == [[height, width, 0, 0, height, width]]
    noise = backbone.initial_noise(SEEDS)
    ours = generate(backbone, PROMPTS, SEEDS, steps=5, guidance_scale=4.0)
    theirs = _xl_pipe(tiny_xl_dir)(PROMPTS, height=height, width=width, num_inference_steps=5, guidance_scale=4.0,
                                   latents=noise, output_type="pt").images
    assert ours.shape == (2, 3, height, width)
    assert (ours - theirs).abs().max().item() <= TOL


def test_non_square_training_step_masks_and_metrics(tiny_dir, tmp_path):
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run", **{"sampler.height": 48, "sampler.width": 32}))
    trainer = Trainer(cfg)
    assert (trainer.backbone.height, trainer.backbone.width) == (48, 32)
    logs = trainer.train_step()
    assert logs["skipped"] == 0.0 and 0.0 < logs["mask_frac"] < 1.0
    batch_prompts, seeds = ["a red circle"], [4]
    ref = trainer.method.reference(batch_prompts, seeds)
    assert ref.images.shape == (1, 3, 48, 32) and ref.mask.shape == (1, 1, 48, 32)
    shifted = (ref.images + 0.1 * ref.mask).clamp(0, 1)  # change inside the mask only
    m = change_metrics(shifted, ref.images, ref.mask)
    assert m["outside_mae"].item() == 0.0 and m["inside_mae"].item() > 0.0


def test_bad_height_is_a_one_line_error(tiny_dir):
    from focusnfix.errors import ConfigError, FocusNFixError

    with pytest.raises(FocusNFixError, match="sampler.height"):
        load_backbone(str(tiny_dir), height=30)
    with pytest.raises(ConfigError, match=r"sampler.width must be in \[1, 16384\] px"):
        load_config(None, base_overrides(tiny_dir, "unused", **{"sampler.width": -8}))
