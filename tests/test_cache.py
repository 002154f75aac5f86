"""Reference cache: hits equal recomputation bit for bit; every key part invalidates; LoRA does not."""
import copy

import pytest
import torch
from conftest import base_overrides

from focusnfix.cache import ReferenceCache, reference_fingerprint
from focusnfix.config import load_config
from focusnfix.methods import FocusNFix
from focusnfix.rewards import ClassifierReward, ColorReward
from focusnfix.trainer import Trainer

PROMPTS, SEEDS = ["a red circle", "a blue square"], [5, 9]


@pytest.fixture(scope="module")
def trainer(tiny_dir, tmp_path_factory):
    return Trainer(load_config(None, base_overrides(tiny_dir, tmp_path_factory.mktemp("c") / "run", **{"train.reference_cache": "memory"})))


def test_cached_reference_equals_recomputed_bit_for_bit(trainer, tmp_path):
    fresh = FocusNFix(trainer.backbone, trainer.reward, trainer.cfg)  # no cache
    expected = fresh.reference(PROMPTS, SEEDS)
    method = trainer.method
    method.cache = ReferenceCache(method.cache.fingerprint, tmp_path / "disk")
    first = method.reference(PROMPTS, SEEDS)
    second = method.reference(PROMPTS, SEEDS)
    assert method.cache.hits == 2 and method.cache.misses == 2
    from_disk = ReferenceCache(method.cache.fingerprint, tmp_path / "disk")  # a new process: disk only
    method.cache = from_disk
    third = method.reference(PROMPTS, SEEDS)
    assert from_disk.hits == 2 and from_disk.misses == 0
    for ref in (first, second, third):
        assert torch.equal(ref.images, expected.images) and torch.equal(ref.mask, expected.mask)
        assert torch.equal(ref.heatmap, expected.heatmap)
    # a damaged cache file is a miss and gets recomputed, not an error
    victim = next((tmp_path / "disk").rglob("*.safetensors"))
    victim.write_bytes(b"garbage")
    method.cache = ReferenceCache(method.cache.fingerprint, tmp_path / "disk")
    recomputed = method.reference(PROMPTS, SEEDS).images  # one image recomputed alone (batch of 1)
    assert method.cache.misses == 1 and torch.allclose(recomputed, expected.images, atol=1e-5)


def test_every_key_part_changes_the_fingerprint_and_lora_does_not(trainer):
    bb, reward, cfg = trainer.backbone, trainer.reward, trainer.cfg
    base = reference_fingerprint(bb, reward, cfg)
    variants = []
    for key, value in (("sampler.steps", 5), ("sampler.guidance_scale", 2.0), ("sampler.negative_prompt", "blurry"),
                       ("mask.threshold", 0.7), ("mask.dilate", 3), ("mask.source", "saliency")):
        c = copy.deepcopy(cfg)
        section, name = key.split(".")
        setattr(getattr(c, section), name, value)
        variants.append(reference_fingerprint(bb, reward, c))
    variants.append(reference_fingerprint(bb, ColorReward(color=(0.0, 1.0, 0.0)), cfg))
    net = torch.nn.Conv2d(3, 2, 1)
    r1 = reference_fingerprint(bb, ClassifierReward(net), cfg)
    with torch.no_grad():
        net.weight[0, 0, 0, 0] += 1e-3
    variants += [r1, reference_fingerprint(bb, ClassifierReward(net), cfg)]
    with torch.no_grad():  # LoRA weights are not part of theta_0: the fingerprint must not change
        for p in trainer.params:
            p.add_(1.0)
    assert reference_fingerprint(bb, reward, cfg) == base
    name, weight = next((n, p) for n, p in bb.unet.named_parameters() if "lora_" not in n and p.ndim == 4)
    with torch.no_grad():
        weight[0, 0, 0, 0] += 1e-3  # a change in the frozen base weights
        variants.append(reference_fingerprint(bb, reward, cfg))
        weight[0, 0, 0, 0] -= 1e-3
    assert len(set(variants)) == len(variants) and base not in variants
