"""Issue 27 item 7, training-loop options: the held-out evaluation every N steps (train.eval_every), the EMA of the
LoRA (train.ema), DoRA (lora.use_dora) and the labelled sample grids; all off by default, changing nothing then."""
import json
import random

import numpy as np
import pytest
import torch
from conftest import base_overrides, interrupted_then_resumed, perturb_lora
from safetensors.torch import load_file

from focusnfix.backbones.lora import adapters_disabled, adapters_per_row, lora_state
from focusnfix.config import load_config
from focusnfix.errors import ConfigError, FocusNFixError
from focusnfix.images import grid_cell, save_preview_grid, to_pil
from focusnfix.rewards.base import RewardOutput
from focusnfix.sampling import generate
from focusnfix.training.trainer import Trainer

EVAL = {"data.eval_prompts": "[a green triangle, a white disc]", "data.eval_seeds": "[3, 4]", "train.eval_every": 2,
        "train.eval_judges": "['test_training_options:RandomJudge', 'color={color: [0.0, 0.0, 1.0]}']"}


class RandomJudge:
    """A judge that draws from torch's, numpy's and Python's global generators when built and when called (as a
    randomly initialised model or a random crop would): the evaluation must not move the run's generators."""

    name, differentiable = "random-judge", False

    def __init__(self):
        torch.rand(3), np.random.rand(3), random.random()

    def __call__(self, images, prompts):
        noise = torch.rand(len(prompts)) + float(np.random.rand()) + random.random()
        return RewardOutput(score=images.mean((1, 2, 3)) + 0 * noise, heatmap=None)


def _trainer(tiny_dir, out, **extra) -> Trainer:
    return Trainer(load_config(None, base_overrides(tiny_dir, out, **extra)))


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_eval_every_logs_held_out_means_and_leaves_the_trajectory_bit_for_bit(tiny_dir, tmp_path):
    """Steps 2 and 3 (every 2nd and the last) log eval/reward and each judge's eval/judge_*; the LoRA after 3 steps
    is equal bit for bit to a run without the evaluation (it draws no numbers the run draws, takes no gradient)."""
    plain = _trainer(tiny_dir, tmp_path / "plain", **{"train.steps": 3})
    plain.train(progress=False)
    evaluated = _trainer(tiny_dir, tmp_path / "eval", **{"train.steps": 3}, **EVAL)
    evaluated.train(progress=False)
    a, b = lora_state(plain.backbone.unet), lora_state(evaluated.backbone.unet)
    assert all(torch.equal(a[n], b[n]) for n in a)

    rows = _rows(tmp_path / "eval")
    keys = {"eval/reward", "eval/judge_test_training_options_randomjudge", "eval/judge_color", "eval/seconds"}
    assert [r["step"] for r in rows] == [1, 2, 3] and not keys & set(rows[0])
    assert all(keys <= set(r) and "reward" in r for r in rows[1:])  # joined to the step's own row
    # the last row's means, recomputed: the final LoRA on the 4 pairs in one batch (eval_batch_size 4)
    prompts, seeds = ["a green triangle"] * 2 + ["a white disc"] * 2, [3, 4, 3, 4]
    images = generate(evaluated.backbone, prompts, seeds, 4, 7.5)
    assert rows[-1]["eval/reward"] == pytest.approx(evaluated.reward(images, prompts).score.mean().item(), rel=1e-6)
    assert rows[-1]["eval/judge_test_training_options_randomjudge"] == pytest.approx(images.mean().item(), rel=1e-6)
    assert rows[-1]["eval/judge_color"] != rows[-1]["eval/reward"]  # its own arguments: blue, not red
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    assert evaluated.evaluator()["eval/reward"] == rows[-1]["eval/reward"]  # the judge drew from each generator
    assert torch.equal(torch.get_rng_state(), before[0]) and (np.random.get_state()[1] == before[1]).all()
    assert random.getstate() == before[2]
    card = (tmp_path / "eval" / "lora" / "README.md").read_text()
    assert "Held-out prompts during training (`train.eval_every`): eval/judge_color " in card


def test_eval_settings_are_checked_before_training(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="train.eval_every needs held-out prompts"):
        load_config(None, base_overrides(tiny_dir, tmp_path / "a", **{"train.eval_every": 2}))
    with pytest.raises(ConfigError, match="train.eval_judges .* which is off"):
        load_config(None, base_overrides(tiny_dir, tmp_path / "a", **{"train.eval_judges": "[color]"}))
    with pytest.raises(ConfigError, match=r"train.ema must be in \[0, 1\)"):
        load_config(None, base_overrides(tiny_dir, tmp_path / "a", **{"train.ema": 1.0}))
    with pytest.raises(ConfigError, match="lora.use_dora is not supported with train.fsdp"):
        load_config(None, base_overrides(tiny_dir, tmp_path / "a", **{"lora.use_dora": True, "train.fsdp": True}))
    with pytest.raises(FocusNFixError, match=r"unknown judge 'nope' \(train.eval_judges\); known: .*color"):
        _trainer(tiny_dir, tmp_path / "b", **{**EVAL, "train.eval_judges": "[nope]"})
    assert not (tmp_path / "b").exists()


def test_ema_follows_its_formula_is_exported_and_resumes_bit_for_bit(tiny_dir, tmp_path):
    """train.ema: after each step ema <- ema + (1 - d_s)(θ - ema), d_s = min(d, (1 + s) / (10 + s)); lora/ holds the
    average, the checkpoint both; the trained weights are those of a run without it (bit for bit); an interrupted
    and resumed run ends with the same trained weights and average, bit for bit (the average is in the checkpoint:
    restarting it from the resumed weights would differ by O(lr)); eval_every samples with the average."""
    extra = {"train.steps": 4, "train.checkpoint_every": 2, "train.ema": 0.9}
    manual = _trainer(tiny_dir, tmp_path / "manual", **extra)
    expected = lora_state(manual.backbone.unet)
    for s in range(2):
        manual.train_step()
        d = min(0.9, (1 + s) / (10 + s))
        expected = {n: e + (1 - d) * (t - e) for (n, e), t in zip(expected.items(), lora_state(manual.backbone.unet)
                                                                   .values())}
    average = manual.ema.state()
    assert max((average[n] - expected[n]).abs().max().item() for n in average) <= 1e-6  # lerp's rounding

    straight = _trainer(tiny_dir, tmp_path / "a", **extra, **{k: v for k, v in EVAL.items() if "judges" not in k})
    straight.train(progress=False)
    plain = _trainer(tiny_dir, tmp_path / "plain", **{"train.steps": 4})
    plain.train(progress=False)
    trained, ema = lora_state(straight.backbone.unet), straight.ema.state()
    assert all(torch.equal(trained[n], t) for n, t in lora_state(plain.backbone.unet).items())
    assert max((trained[n] - ema[n]).abs().max().item() for n in ema) > 1e-3  # the average lags the weights
    checkpoint = tmp_path / "a" / "checkpoints" / "step-000004"
    saved = load_file(checkpoint / "ema.safetensors")
    assert all(torch.equal(saved[n], ema[n]) for n in ema)
    assert all(torch.equal(t, trained[n]) for n, t in load_file(checkpoint / "lora.safetensors").items())
    exported = load_file(tmp_path / "a" / "lora" / "pytorch_lora_weights.safetensors")
    shapes = lambda s: sorted((tuple(t.shape), round(t.double().sum().item(), 9)) for t in s.values())  # noqa: E731
    assert shapes(exported) == shapes(ema) != shapes(trained)  # diffusers' names, the average's tensors
    prompts = ["a green triangle"] * 2 + ["a white disc"] * 2
    with straight.ema.applied():  # the evaluation of step 4 sampled the average
        images = generate(straight.backbone, prompts, [3, 4, 3, 4], 4, 7.5)
    assert all(torch.equal(t, trained[n]) for n, t in lora_state(straight.backbone.unet).items())  # swapped back
    rows = _rows(tmp_path / "a")
    assert rows[-1]["eval/reward"] == pytest.approx(straight.reward(images, prompts).score.mean().item(), rel=1e-6)

    resumed = interrupted_then_resumed(tiny_dir, tmp_path / "b", 2, **extra)
    assert all(torch.equal(t, trained[n]) for n, t in lora_state(resumed.backbone.unet).items())
    assert all(torch.equal(t, ema[n]) for n, t in resumed.ema.state().items())


def test_off_values_change_nothing_and_save_no_ema(tiny_dir, tmp_path):
    """The new keys at their off values: the same checkpoint files, byte for byte, as a run that does not name them,
    and no ema.safetensors. (Verified once against the code before these keys: same LoRA bits for fnf, draft, grpo.)"""
    _trainer(tiny_dir, tmp_path / "a").train(progress=False)
    off = {"train.ema": 0.0, "train.eval_every": 0, "lora.use_dora": False, "train.eval_judges": "[]",
           "data.eval_seeds": "[0]"}
    _trainer(tiny_dir, tmp_path / "b", **off).train(progress=False)
    a, b = (tmp_path / x / "checkpoints" / "step-000002" for x in "ab")
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert not (a / "ema.safetensors").exists()
    for name in ("lora.safetensors", "optimizer.safetensors", "trainer.json", "scheduler.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_dora_trains_saves_and_loads_in_diffusers_with_the_same_images(tiny_dir, tmp_path):
    """lora.use_dora: magnitude vectors train beside A and B; lora/ records use_dora, loads through diffusers'
    load_lora_weights with the images of our model (1e-4, as the plain LoRA's export test: float32 rounding over 6
    steps, measured 0); no kohya copy, and `focusnfix export --format kohya` refuses it in one line."""
    from diffusers import StableDiffusionPipeline

    from focusnfix.runs.kohya import export_kohya

    trainer = _trainer(tiny_dir, tmp_path / "run", **{"lora.use_dora": True})
    before = lora_state(trainer.backbone.unet)
    assert any("lora_magnitude_vector" in n for n in before)
    run = trainer.train(progress=False)
    after = lora_state(trainer.backbone.unet)
    assert all(not torch.equal(before[n], after[n]) for n in after if "lora_magnitude_vector" in n)
    assert json.loads((run / "lora" / "lora_config.json").read_text())["use_dora"] is True
    assert not list((run / "lora").glob("*_kohya.safetensors"))
    perturb_lora(trainer.backbone.unet)  # a clearly visible LoRA for the round trip
    with torch.no_grad():
        for n, p in trainer.backbone.unet.named_parameters():
            if "lora_magnitude_vector" in n:
                p.mul_(1.1)
    trainer.write_lora("lora", None)
    prompts, seeds = ["a blue square", "a red circle"], [1, 2]
    ours = generate(trainer.backbone, prompts, seeds, steps=6, guidance_scale=5.0)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    base = pipe(prompts, num_inference_steps=6, guidance_scale=5.0, latents=trainer.backbone.initial_noise(seeds),
                output_type="pt").images
    pipe.load_lora_weights(run / "lora", weight_name="pytorch_lora_weights.safetensors")
    theirs = pipe(prompts, num_inference_steps=6, guidance_scale=5.0, latents=trainer.backbone.initial_noise(seeds),
                  output_type="pt").images
    assert (ours - base).abs().max() > 1e-2 and (ours - theirs).abs().max() <= 1e-4
    with pytest.raises(FocusNFixError, match="this is a DoRA LoRA"):
        export_kohya(run)

    # per-row adapters (the batched reference pass): a row with 0 is θ0 and a row with 1 is θ, bit for bit
    unet, x = trainer.backbone.unet, trainer.backbone.initial_noise([0, 1])
    cond, t = trainer.backbone.encode(["a red circle"] * 2, "", 1.0).embeds, torch.tensor(500)
    with torch.no_grad():
        on = unet(x, t, encoder_hidden_states=cond).sample
        with adapters_disabled(unet):
            off = unet(x, t, encoder_hidden_states=cond).sample
        with adapters_per_row(unet, torch.tensor([1.0, 0.0])):
            mixed = unet(x, t, encoder_hidden_states=cond).sample
    assert (on - off).abs().max() > 1e-3
    assert torch.equal(mixed[0], on[0]) and torch.equal(mixed[1], off[1])


def test_sample_grids_are_labelled_and_keep_their_cells_where_the_layout_says(tiny_dir, tmp_path):
    """Each row's seed and prompt, the columns Î0 / M / Î and the step are drawn in bands below the rows and a
    footer; every cell is the upscaled image itself (grid_cell cuts it out exactly: the model card's widget); the
    cells keep the unlabelled grid's x and move down one band per row."""
    g = torch.Generator().manual_seed(0)
    preview = {"reference": torch.rand(2, 3, 32, 32, generator=g), "images": torch.rand(2, 3, 32, 32, generator=g),
               "mask": (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()}
    plain = save_preview_grid(preview, tmp_path / "plain.png")
    labelled = save_preview_grid(preview, tmp_path / "labelled.png", rows=[("a red circle", 0), ("x " * 300, 7)],
                                 title="step 30")
    from PIL import Image

    with Image.open(plain) as p, Image.open(labelled) as q:
        layout = json.loads(q.text["focusnfix-grid"])
        assert q.width == p.width == 4 * (3 * 34 + 2) and layout["scale"] == 4 and layout["band"] > 0
        assert q.height == p.height + 2 * layout["band"] + layout["footer"]
        band = np.asarray(q.convert("L"))[4 * 34 + 4: 4 * 34 + 4 + layout["band"]]
        assert (band < 128).any() and (band[:, -4:] == 255).all()  # text drawn, the long prompt cut before the edge
    for path in (plain, labelled):
        for row in range(2):
            for col, key in enumerate(("reference", None, "images")):
                cell = grid_cell(path, row, col)
                assert cell is not None and cell.size == (128, 128)
                if key is not None:
                    assert cell.convert("RGB").tobytes() == to_pil(preview[key][row], 128).tobytes()

    run = _trainer(tiny_dir, tmp_path / "run", **{"train.steps": 1}).train(progress=False)
    with Image.open(run / "samples" / "final.png") as final, Image.open(run / "lora" / "lora-sample.png") as widget:
        assert json.loads(final.text["focusnfix-grid"])["band"] > 0
        assert widget.tobytes() == grid_cell(run / "samples" / "final.png", 0, 2).tobytes()
