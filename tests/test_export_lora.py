"""train.export_lora_steps: diffusers-format LoRAs at chosen steps (RUN/lora-step-NNNNNN/, the format of lora/)."""
import json
import shutil

import pytest
import torch
from conftest import base_overrides
from diffusers import StableDiffusionPipeline

from focusnfix.config import load_config
from focusnfix.backbones.lora import load_lora_into
from focusnfix.sampling import generate
from focusnfix.training.trainer import Trainer

WEIGHTS = "pytorch_lora_weights.safetensors"


def same_lora(a, b) -> bool:
    """Two LoRA folders hold the same tensors bit for bit (dtype, shape, every bit) and the same metadata.
    Not the files' bytes: safetensors writes its metadata mapping (format, lora_adapter_metadata) in a
    hash-map order that varies between writes."""
    from safetensors import safe_open

    with safe_open(a / WEIGHTS, "pt") as fa, safe_open(b / WEIGHTS, "pt") as fb:
        if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()):
            return False
        return all(fa.get_tensor(k).dtype == fb.get_tensor(k).dtype and torch.equal(fa.get_tensor(k).view(torch.uint8),
                                                                               fb.get_tensor(k).view(torch.uint8))
                   for k in fa.keys())


def _train(tiny_dir, out, resume=False, **extra):
    values = {"train.steps": 3, "train.export_lora_steps": "[1, 3]", "train.checkpoint_every": 1,
              "train.keep_checkpoints": 5, **extra}
    trainer = Trainer(load_config(None, base_overrides(tiny_dir, out, **values)))
    trainer.train(resume=resume, progress=False)
    return trainer


def test_exports_match_runs_stopped_there_and_load_in_diffusers(tiny_dir, tmp_path):
    trainer = _train(tiny_dir, tmp_path / "run")
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("lora-step-*")) == ["lora-step-000001", "lora-step-000003"]
    last, final = run / "lora-step-000003", run / "lora"
    assert same_lora(last, final)  # the last export is the final LoRA, bit for bit
    assert (last / "lora_config.json").read_bytes() == (final / "lora_config.json").read_bytes()
    card = (run / "lora-step-000001" / "README.md").read_text()
    assert "1 of 3" in card and "lora-step-000001" in card and "load_lora_weights" in card

    stopped = tmp_path / "stopped"  # a run of 1 step writes, in lora/, what the export of step 1 holds
    _train(tiny_dir, stopped, **{"train.steps": 1, "train.export_lora_steps": "[]"})
    assert same_lora(stopped / "lora", run / "lora-step-000001")

    prompts, seeds = ["a blue square", "a red circle"], [1, 2]
    ours = generate(trainer.backbone, prompts, seeds, steps=6, guidance_scale=5.0)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(last, weight_name=WEIGHTS)  # diffusers' own loader
    theirs = pipe(prompts, num_inference_steps=6, guidance_scale=5.0, latents=trainer.backbone.initial_noise(seeds),
                  output_type="pt").images
    # the same float32 model run by diffusers' pipeline: <= 1e-4 as test_training's lora/ round trip
    assert (ours - theirs).abs().max() <= 1e-4
    pipe.unload_lora_weights()
    load_lora_into(pipe, run / "lora-step-000001")  # the loader of `focusnfix eval --methods NAME=RUN/lora-step-000001`
    first = pipe(prompts, num_inference_steps=6, guidance_scale=5.0, latents=trainer.backbone.initial_noise(seeds),
                 output_type="pt").images
    assert (first - theirs).abs().max() > 1e-3  # step 1 is another LoRA


@pytest.mark.filterwarnings("ignore:resuming from step-000001")
def test_resume_keeps_present_exports_and_drops_stale_ones(tiny_dir, tmp_path):
    run = tmp_path / "run"
    _train(tiny_dir, run)
    stamp = {p.name: p.stat().st_mtime_ns for p in run.glob("lora-step-*")}
    first = tmp_path / "first"
    shutil.copytree(run / "lora-step-000003", first)
    # resume from step 1 with the same config: the same trajectory, so the step-3 export is kept as it is
    _train(tiny_dir, run, resume=run / "checkpoints" / "step-000001")
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("lora-step-*")} == stamp
    assert same_lora(run / "lora", first)  # and the resumed run ends where it did
    assert not list(run.glob(".tmp-*"))

    # resume from step 1 with another learning rate: a new trajectory, so the step-3 export is rewritten
    _train(tiny_dir, run, resume=run / "checkpoints" / "step-000001", **{"train.lr": 0.02})
    assert (run / "lora-step-000001").stat().st_mtime_ns == stamp["lora-step-000001"]
    assert not same_lora(run / "lora-step-000003", first)
    assert same_lora(run / "lora-step-000003", run / "lora")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and "config_changed" in rows[1]


def test_export_steps_beyond_the_run_and_bad_values(tiny_dir, tmp_path):
    from focusnfix.errors import ConfigError

    _train(tiny_dir, tmp_path / "run", **{"train.steps": 2, "train.export_lora_steps": "[2, 5]"})
    assert [p.name for p in (tmp_path / "run").glob("lora-step-*")] == ["lora-step-000002"]
    with pytest.raises(ConfigError, match="train.export_lora_steps"):
        load_config(None, base_overrides(tiny_dir, tmp_path / "x", **{"train.export_lora_steps": "[0]"}))
