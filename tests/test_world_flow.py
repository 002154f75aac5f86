"""The flow-matching world: its SD3-format pipeline loads with diffusers and our sampler equals it, the
training shortcut for the zero T5 slot is exact, and the transformer stage trains and resumes."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from focusnfix.world import flow_pipeline_path, pipeline_path  # noqa: E402
from focusnfix.world.flow import FlowModelConfig, RepeatedTokenJointAttention, build_transformer  # noqa: E402

PROMPTS = ["a large blue square in the center, white background", "a small red circle on the left, gray background"]
# Same float32 modules on both sides, identical operations (measured difference: 0); 1e-4 on [0, 1] images
# leaves room for a different operation order only, as in tests/test_flow.py.
TOL = 1e-4


def _sd3(path):
    from diffusers import StableDiffusion3Pipeline

    # diffusers' documented way to load SD3 without T5; the pipeline then feeds zeros in the T5 slot
    pipe = StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sampler_gap(path, steps: int = 4, guidance: float = 5.0) -> tuple[torch.Tensor, float]:
    from focusnfix.backbones import SD3Backbone, load_backbone
    from focusnfix.sampling import generate

    backbone = load_backbone(str(path))
    assert isinstance(backbone, SD3Backbone) and backbone.resolution == 64
    ours = generate(backbone, PROMPTS, [3, 11], steps=steps, guidance_scale=guidance)
    theirs = _sd3(path)(PROMPTS, num_inference_steps=steps, guidance_scale=guidance,
                        latents=backbone.initial_noise([3, 11]), output_type="pt").images
    return ours, (ours - theirs).abs().max().item()


@pytest.mark.parametrize("qk_norm", [None, "rms_norm"])
def test_repeated_token_attention_equals_the_full_zero_slot(qk_norm):
    """[16 CLIP tokens, 1 zero token with log(256) added to its logits] == [16 CLIP tokens, 256 zero tokens]."""
    torch.manual_seed(0)
    model = build_transformer(FlowModelConfig(layers=3, heads=2, head_dim=16, qk_norm=qk_norm), 4, 64, 64).eval()
    x, clip, pooled = torch.randn(3, 4, 16, 16), torch.randn(3, 16, 128), torch.randn(3, 128)
    t = torch.tensor([10.0, 500.0, 990.0])
    full = torch.cat([clip, torch.zeros(3, 256, 128)], 1)
    with torch.no_grad():
        ref = model(hidden_states=x, encoder_hidden_states=full, pooled_projections=pooled, timestep=t).sample
        model.set_attn_processor(RepeatedTokenJointAttention(256))
        short = model(hidden_states=x, encoder_hidden_states=full[:, :17], pooled_projections=pooled, timestep=t).sample
        wrong = RepeatedTokenJointAttention(1)  # the zero slot counted once: a different model
        model.set_attn_processor(wrong)
        once = model(hidden_states=x, encoder_hidden_states=full[:, :17], pooled_projections=pooled, timestep=t).sample
    # float32, outputs O(1): only the softmax's summation order differs (measured 6e-7)
    assert (ref - short).abs().max() < 1e-5
    assert (ref - once).abs().max() > 1e-2


def _changed(path, before: dict, prefix: str) -> bool:
    after = load_file(str(path))
    return all(not torch.equal(v, after[prefix + k]) for k, v in before.items() if v.is_floating_point())


@pytest.mark.skipif(not pipeline_path().exists(), reason="committed world weights not present")
def test_flow_training_trains_resumes_and_loads_in_diffusers(tmp_path):
    from focusnfix.world import train_flow as TF
    from focusnfix.world.flow import encode_captions

    cfg = TF.tiny_flow_config()
    log = TF.train_flow(cfg, tmp_path / "a", pipeline_path())
    assert len(log["losses"]) == 3 and np.isfinite(log["losses"]).all()
    vae, te, _ = TF.load_world_parts(pipeline_path())
    torch.manual_seed(cfg.stage.seed)
    init = {k: v.clone()
            for k, v in build_transformer(cfg.model, vae.config.latent_channels, 64, 64).named_parameters()}
    ck = tmp_path / "a" / "ckpt" / "transformer" / "model.safetensors"
    assert _changed(ck, init, "transformer.")  # every trainable parameter moved
    # interrupted after 2 steps and resumed == 3 straight steps
    cfg.stage.stop_at = 2
    TF.train_flow(cfg, tmp_path / "b", pipeline_path())
    cfg.stage.stop_at = None
    assert len(TF.train_flow(cfg, tmp_path / "b", pipeline_path(), resume=True)["losses"]) == 3
    a, b = load_file(str(ck)), load_file(str(tmp_path / "b" / "ckpt" / "transformer" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the saved folder is a StableDiffusion3Pipeline; its conditioning is the world's CLIP (identity projection)
    pipe = _sd3(tmp_path / "a" / "pipeline")
    cond = encode_captions(pipe, PROMPTS)
    assert cond["repeats"] == 256 and cond["embeds"].shape == (2, 17, 128)
    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        world = te(ids, output_hidden_states=True)
    assert torch.allclose(cond["pooled"], torch.cat([world.pooler_output] * 2, -1), atol=1e-6)
    assert torch.allclose(cond["embeds"][:, :16], torch.cat([world.hidden_states[-2]] * 2, -1), atol=1e-6)
    _, gap = _sampler_gap(tmp_path / "a" / "pipeline", steps=3)
    assert gap <= TOL


committed = pytest.mark.skipif(not flow_pipeline_path().exists(), reason="committed flow world weights not present")


@committed
def test_committed_flow_world_equals_diffusers_and_draws_the_prompt():
    images, gap = _sampler_gap(flow_pipeline_path())
    assert images.shape == (2, 3, 64, 64) and gap <= TOL
    blue_square = images[0]
    # a drawn shape, not a flat field: the blue square makes the blue channel differ from red
    assert float(blue_square.std()) > 0.05 and float((blue_square[2] - blue_square[0]).mean()) > 0.05


@committed
def test_world_flow_by_name():
    from focusnfix.backbones import load_backbone
    from focusnfix.evaluation.world_metrics import eval_metrics_for

    backbone = load_backbone("world-flow")
    assert type(backbone.pipe).__name__ == "StableDiffusion3Pipeline" and backbone.pipe.text_encoder_3 is None
    assert backbone.scheduler.config.shift == FlowModelConfig().shift
    assert len(eval_metrics_for("world-flow")) == 1 and len(eval_metrics_for(str(flow_pipeline_path()))) == 1


def test_demo_flow_arch_runs_on_a_tiny_sd3(tmp_path):
    """``focusnfix.cli.demo --arch flow`` (mechanics, on a tiny random SD3 pipeline instead of the world)."""
    import json

    from focusnfix.cli.demo import main as demo

    assert demo(["--model", "tiny", "--arch", "flow", "--out", str(tmp_path / "demo"), "--steps", "1",
                 "--seeds", "7"]) == 0
    config = (tmp_path / "demo" / "fnf" / "config.yaml").read_text()
    assert "tiny-sd3" in config
    rows = [json.loads(x) for x in (tmp_path / "demo" / "eval" / "samples.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"base", "draft", "fnf"}
