"""The built-in world: ground truth of the generator, tokenizer, trainers, committed weights."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from focusnfix.world import data, pipeline_path  # noqa: E402

ATTRS = {"shape": "square", "colour": "red", "background": "gray", "position": "left", "size": "large"}


def _render(seed: int, **kw) -> data.Sample:
    return data.render(ATTRS, np.random.default_rng(seed), **kw)


def test_object_mask_has_object_colour_and_background_elsewhere():
    s = data.sample(seed=3, index=0, p_artifact=0.0, p_unwanted=0.0)
    img, m = s.image, s.object_mask[0] > 0
    colour = torch.tensor(data.COLOURS[s.attrs["colour"]])
    bg = torch.tensor(data.BACKGROUNDS[s.attrs["background"]])
    assert m.any()
    assert torch.allclose(img[:, m], colour[:, None].expand(-1, int(m.sum())))
    assert torch.allclose(img[:, ~m], bg[:, None].expand(-1, int((~m).sum())))


@pytest.mark.parametrize("seed", range(5))
def test_defect_masks_cover_exactly_the_altered_pixels(seed):
    clean = _render(seed)
    art = _render(seed, artifact=True)
    changed = (art.image != clean.image).any(0)
    assert changed.any() and torch.equal(changed, art.artifact_mask[0] > 0)
    assert not art.has_unwanted
    unw = _render(seed, unwanted=True)
    changed = (unw.image != clean.image).any(0)
    assert changed.any() and torch.equal(changed, unw.unwanted_mask[0] > 0)
    assert torch.allclose(unw.image[:, changed], torch.tensor(data.MAGENTA)[:, None].expand(-1, int(changed.sum())))


def test_unwanted_element_only_on_trigger_shape_and_determinism():
    b = data.make_batch(64, seed=11, p_artifact=0.5, p_unwanted=1.0)
    is_sq = torch.tensor(["square" in c.split() for c in b.captions]).float()
    assert torch.equal(b.has_unwanted, is_sq)
    b2 = data.make_batch(4, seed=11, start=2, p_artifact=0.5, p_unwanted=1.0)
    assert torch.equal(b2.images, b.images[2:6]) and b2.captions == b.captions[2:6]


def test_caption_round_trip():
    for i in range(20):
        attrs = data.random_attributes(np.random.default_rng(i))
        assert data.parse_caption(data.caption(attrs)) == attrs


def test_tokenizer_round_trips_grammar_words(tmp_path):
    from transformers import CLIPTokenizer

    from focusnfix.world.tokenizer import write_tokenizer_files

    vocab, merges = write_tokenizer_files(tmp_path)
    tok = CLIPTokenizer(str(vocab), str(merges))
    for w in data.words():
        ids = tok(w).input_ids
        assert len(ids) == 3, w  # BOS, word, EOS
        assert tok.convert_ids_to_tokens(ids[1]) == w + "</w>"
    cap = "a small red circle on the left, gray background"
    assert tok.decode(tok(cap).input_ids, skip_special_tokens=True).replace(" ,", ",") == cap
    assert len(tok("zebra").input_ids) > 3  # unknown words still tokenize (byte symbols)


def _changed(path, before: dict, prefix: str = "") -> bool:
    after = load_file(str(path))
    return all(not torch.equal(v, after[prefix + k]) for k, v in before.items() if v.is_floating_point())


def test_generative_stages_train_and_resume(tmp_path):
    import shutil

    from focusnfix.world import train as T
    from focusnfix.world.model import build_unet

    cfg = T.tiny_config()
    logs = [T.train_vae(cfg, tmp_path), T.train_text(cfg, tmp_path), T.train_unet(cfg, tmp_path)]
    for log in logs:
        assert len(log["losses"]) == 3 and np.isfinite(log["losses"]).all()
    torch.manual_seed(cfg.unet.seed)
    init = {k: v.clone() for k, v in build_unet(cfg.model).state_dict().items() if "weight" in k}
    ck = tmp_path / "ckpt" / "unet" / "model.safetensors"
    assert _changed(ck, init, "unet.")
    assert (tmp_path / "pipeline" / "model_index.json").exists()
    # interrupted after 2 steps and resumed == 3 straight steps
    other = tmp_path / "other"
    for d in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(tmp_path / d, other / d)
    cfg.unet.stop_at = 2
    T.train_unet(cfg, other)
    cfg.unet.stop_at = None
    log = T.train_unet(cfg, other, resume=True)
    assert len(log["losses"]) == 3
    a, b = load_file(str(ck)), load_file(str(other / "ckpt" / "unet" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_heads_train(tmp_path):
    from focusnfix.world import train_heads as H
    from focusnfix.world.nets import NETS

    cfg = H.tiny_heads_config()
    logs = H.train_heads(cfg, tmp_path, tuple(H.FILES))
    for kind, log in logs.items():
        assert np.isfinite(log["losses"]).all()
        torch.manual_seed(cfg.stages[kind].seed)
        init = {k: v for k, v in NETS[kind]().state_dict().items() if k.endswith("weight")}
        assert _changed(tmp_path / f"{H.FILES[kind]}.safetensors", init), kind


committed = pytest.mark.skipif(
    not pipeline_path().exists(), reason="committed world weights not present"
)


@committed
def test_committed_pipeline_loads_and_generates():
    from diffusers import StableDiffusionPipeline

    from focusnfix.world import pipeline_path

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_path(), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a large blue square in the center, white background"], num_inference_steps=4,
               guidance_scale=5.0, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 3, 64, 64)
    img = out.images[0]
    # a drawn shape, not a flat field: the blue square makes the blue channel differ from red
    assert (float(img.std()) > 0.05
            and float((img[2] - img[0]).mean()) > 0.05), (float(img.std()), float((img[2] - img[0]).mean()))


@committed
def test_rewards_contract_and_gradients():
    from focusnfix.rewards.base import check_output
    from focusnfix.world import WorldArtifactReward, WorldSafetyReward

    b = data.make_batch(3, seed=5)
    for reward in (WorldArtifactReward(), WorldSafetyReward()):
        assert reward.differentiable and isinstance(reward.name, str)
        x = b.images.clone().requires_grad_(True)
        out = check_output(reward(x, b.captions), x)
        assert (out.heatmap is None) == (reward.name == "world_safety")
        out.score.sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
    x = torch.rand(2, 3, 96, 96)
    assert WorldArtifactReward()(x, ["a", "b"]).heatmap.shape == (2, 1, 96, 96)


@committed
def test_judges_shapes():
    from focusnfix.world import AlignmentOracle, DefectJudge

    b = data.make_batch(4, seed=6)
    res = AlignmentOracle()(b.images, b.captions)
    assert res.all_correct.shape == (4,) and set(res.correct) == set(data.ATTRIBUTES)
    p = DefectJudge()(b.images)
    assert p["artifact"].shape == (4,) and p["unwanted"].shape == (4,)
    assert bool(((p["artifact"] >= 0) & (p["artifact"] <= 1)).all())


def test_world_checkpoint_round_trip_and_overwrite(tmp_path):
    """world/ckpt.py: modules, AdamW state and JSON state come back exactly; saving again to the same
    path replaces the checkpoint and leaves no temporary or set-aside folder."""
    from focusnfix.world.ckpt import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(2):
        net(torch.randn(5, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path / "ck"
    save_checkpoint(path, {"net": net}, opt, {"step": 1})
    save_checkpoint(path, {"net": net}, opt, {"step": 2, "log": [0.5]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    net2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-2)
    state = load_checkpoint(path, {"net": net2}, opt2)
    assert state == {"step": 2, "log": [0.5]}
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i][k], s2[i][k]) for i in s1 for k in s1[i])
