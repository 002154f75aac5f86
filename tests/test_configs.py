"""Every shipped config runs two training steps end to end, with the model replaced by a tiny
pipeline of the same architecture built in code (and CLIP / user plug-in rewards by tiny stand-ins)."""
from pathlib import Path

import pytest
import yaml

from focusnfix.config import load_config
from focusnfix.errors import FocusNFixError
from focusnfix.training.trainer import Trainer

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
TINY_REWARDS = {  # the user's own plug-in heatmap model is replaced by the world's (same contract)
    "my_pkg.rewards:ArtifactReward": ["reward.name=focusnfix.world.rewards:WorldArtifactReward", "reward.args={}"],
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from focusnfix.backbones.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_two_step_smoke(request, path, tiny_clip, tmp_path):
    raw = yaml.safe_load(path.read_text())
    family = next((f for key, f in (("xl", "tiny_xl_dir"), ("diffusion-3", "tiny_sd3_dir"), ("FLUX", "tiny_flux_dir"))
                   if key in raw["model"]["path"]), "tiny_dir")
    model = str(request.getfixturevalue(family)) if raw["model"]["path"] != "tiny" else "tiny"
    if raw["model"]["path"] == "world-flow":  # the committed flow world is tiny itself: run it, the SD3 family
        model = "world-flow"
    overrides = [f"model.path={model}", "model.resolution=32", "model.dtype=float32", "train.mixed_precision=no",
                 "train.steps=2", "train.grad_accum=1", "sampler.steps=3", "train.sample_every=0",
                 "train.checkpoint_every=0", f"train.output_dir={tmp_path / 'run'}"]
    if (raw.get("grpo") or {}).get("timesteps"):  # at most sampler.steps (a config check)
        overrides.append("grpo.timesteps=2")
    overrides += TINY_REWARDS.get(raw["reward"]["name"], [])
    if "model" in (raw["reward"].get("args") or {}):
        overrides.append(f"reward.args.model={tiny_clip}")
    cfg = load_config(path, overrides)
    run = Trainer(cfg).train(progress=False)
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_evaluation_only_sets_are_refused_for_training(tiny_dir, tmp_path):
    cfg = load_config(None, [f"model.path={tiny_dir}", "data.prompt_set=i2p:sexual", f"train.output_dir={tmp_path}/r"])
    with pytest.raises(FocusNFixError, match="safety evaluation only"):
        Trainer(cfg)


def test_composite_reward_masks_union_and_intersection(tiny_dir, tmp_path):
    import torch

    from focusnfix.methods import FocusNFix
    from focusnfix.rewards.registry import build_reward

    terms = [{"name": "color", "args": {"color": [1, 0, 0]}, "weight": 1.0, "mask": {"threshold": 0.05, "dilate": 0}},
             {"name": "color", "args": {"color": [0, 0, 1]}, "weight": 2.0, "mask": {"threshold": 0.05, "dilate": 0}}]
    images = torch.ones(1, 3, 8, 8)  # white: far from both colours
    images[:, :, 0:2] = torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)  # red rows
    images[:, :, 2:4] = torch.tensor([0, 0, 1.0]).view(1, 3, 1, 1)  # blue rows
    images[:, :, 4:6] = torch.tensor([0.6, 0, 0.6]).view(1, 3, 1, 1)  # magenta rows: close enough to both
    union = build_reward("sum", terms=terms, combine="union")
    inter = build_reward("sum", terms=terms, combine="intersection")
    red, blue = (build_reward("color", color=c)(images).score for c in ([1, 0, 0], [0, 0, 1]))
    assert torch.allclose(union(images, ["x"]).score, red + 2 * blue)
    cfg = load_config(None, [f"model.path={tiny_dir}", "data.prompts=[x]"])
    m_union, _ = FocusNFix(None, union, cfg).mask(images, ["x"])
    m_inter, _ = FocusNFix(None, inter, cfg).mask(images, ["x"])
    m_red, _ = build_reward("sum", terms=terms[:1]).problem_mask(images, ["x"])
    m_blue, _ = build_reward("sum", terms=terms[1:]).problem_mask(images, ["x"])
    assert torch.equal(m_union, torch.maximum(m_red, m_blue)) and torch.equal(m_inter, torch.minimum(m_red, m_blue))
    assert m_inter.sum() == 16 and m_union.sum() == 48  # magenta rows only / red + blue + magenta rows
    with pytest.raises(FocusNFixError, match="union or intersection"):
        build_reward("sum", terms=terms, combine="xor")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_prompts_parse_as_intended(path):
    """A caption with a comma must be quoted in YAML, or a flow list splits it in two (the world configs
    once sampled "blue background" as a prompt). World prompts must be captions of the world's grammar
    (caption(parse_caption(p)) == p); other configs have no grammar, but none of their prompts may be a
    two-word fragment like that one."""
    from focusnfix.world.data import caption, parse_caption

    cfg = load_config(path)
    prompts = cfg.data.prompts + cfg.data.sample_prompts
    assert prompts or cfg.data.prompt_set, path
    for p in prompts:
        if cfg.model.path.startswith("world"):
            attrs = parse_caption(p)
            assert len(attrs) == 5 and caption(attrs) == p, p
        else:
            assert len(p.split()) >= 3, p
