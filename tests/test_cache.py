"""Reference cache: hits equal recomputation bit for bit; every key part invalidates; LoRA does not."""
import copy

import pytest
import torch
from conftest import base_overrides, perturb_lora

from focusnfix.training.cache import ReferenceCache, reference_fingerprint
from focusnfix.config import load_config
from focusnfix.methods import FocusNFix
from focusnfix.rewards import ClassifierReward, ColorReward
from focusnfix.training.trainer import Trainer

PROMPTS, SEEDS = ["a red circle", "a blue square"], [5, 9]
# Images of the same (prompt, seed) from UNet batches of other sizes: the same float32 ops, which the
# CPU's kernels block and so round differently, a few ulps each through the sampler's UNet calls and
# the decoder: up to ~1e3 eps = 1e-4 on [0, 1] images (measured <= 2.6e-6 over AVX-512, AVX2 and
# default kernels); another seed, prompt or LoRA state moves pixels by > 1e-2.
IMG_TOL = 1e-4


@pytest.fixture(scope="module")
def trainer(tiny_dir, tmp_path_factory):
    return Trainer(load_config(None, base_overrides(tiny_dir, tmp_path_factory.mktemp("c") / "run",
                                                    **{"train.reference_cache": "memory", "data.seed_pool": 16})))


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
        # the loss never reads the map
        assert ref.images.dtype == ref.mask.dtype == torch.float32 and ref.heatmap is None
    # a damaged cache file is a miss and gets recomputed, not an error
    victim = next((tmp_path / "disk").rglob("*.safetensors"))
    victim.write_bytes(b"garbage")
    method.cache = ReferenceCache(method.cache.fingerprint, tmp_path / "disk")
    recomputed = method.reference(PROMPTS, SEEDS).images  # one image recomputed alone (batch of 1)
    assert method.cache.misses == 1 and torch.allclose(recomputed, expected.images, rtol=0, atol=IMG_TOL)


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


def test_adapters_per_row_runs_theta0_and_theta_in_one_batch(tiny_dir, tmp_path):
    """Row 0 with adapters off equals the adapters-disabled UNet, row 1 the fine-tuned one, in one call
    (with CFG's doubled batch); and the LoRA really changes the output, so the check can fail."""
    from focusnfix.backbones.lora import adapters_disabled, adapters_per_row

    t = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "run")))
    bb = t.backbone
    perturb_lora(bb.unet)
    with torch.no_grad():
        cond = bb.encode(PROMPTS, "", 5.0)
        x = bb.initial_noise(SEEDS)
        step = bb.scheduler.timesteps[0] if len(bb.scheduler.timesteps) else torch.tensor(999)
        with adapters_per_row(bb.unet, torch.tensor([0.0, 1.0])):
            mixed = bb.model_fn(x, step, cond)
        with adapters_disabled(bb.unet):
            base = bb.model_fn(x, step, cond)
        tuned = bb.model_fn(x, step, cond)
    assert (base[1] - tuned[1]).abs().max() > 1e-2
    assert torch.allclose(mixed[0], base[0], atol=1e-6) and torch.allclose(mixed[1], tuned[1], atol=1e-6)


def test_batched_reference_equals_separate_passes(tiny_dir, tmp_path):
    """train.batch_reference: Î0, M(Î0) and Î (and so the loss and gradient) equal the two-pass path
    to float rounding, for a fine-tuned LoRA, a cached/missing mix, and K = T (nothing to share)."""
    t = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "run",
                                                 **{"sampler.steps": 6, "data.seed_pool": 16})))
    perturb_lora(t.backbone.unet, seed=1)
    method = t.method
    method.cache = ReferenceCache(method.cache.fingerprint, None)
    method.reference(PROMPTS[:1], SEEDS[:1])  # the first pair cached, the second missing
    for k in (2, 6):
        results = {}
        for flag in (False, True):
            method.batch_reference = flag
            cache = copy.deepcopy(method.cache)
            method.cache = cache
            ref, images = method.reference_and_trained(PROMPTS, SEEDS, k)
            results[flag] = (ref, images)
            assert cache.misses == 1 + 1 and cache.hits == 1  # the batched path computes only what is missing
            method.cache = ReferenceCache(cache.fingerprint, None)
            method.reference(PROMPTS[:1], SEEDS[:1])
        (ra, ia), (rb, ib) = results[False], results[True]
        assert torch.allclose(ra.images, rb.images, rtol=0, atol=IMG_TOL) and torch.equal(ra.mask, rb.mask)
        assert torch.allclose(ia, ib, rtol=0, atol=IMG_TOL) and ib.requires_grad
    separate = FocusNFix(t.backbone, t.reward, t.cfg).reference(PROMPTS, SEEDS)  # no cache at all
    assert torch.allclose(separate.images, rb.images, rtol=0, atol=IMG_TOL)


def test_resume_with_the_default_memory_cache_is_bit_exact(tiny_dir, tmp_path):
    """Issue 26 #7: with a seed pool the memory cache serves Î0 computed at an earlier step (in that step's batch);
    a resumed run used to start with an empty cache and recompute them in other batches, a few ulps apart (3e-7 in the
    LoRA after one interruption). The checkpoint now holds the cache's keys and the entries are spilled once beside
    the checkpoints, so the resumed run reads the same Î0: the LoRA is equal bit for bit (an Adam step turns any
    difference into one well above 0)."""
    from conftest import interrupted_then_resumed

    from focusnfix.backbones.lora import lora_state

    extra = {"train.steps": 6, "train.checkpoint_every": 3, "data.seed_pool": 2, "train.batch_size": 2,
             "sampler.k_max": 2}
    straight = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "a", **extra)))
    assert straight.method.cache is not None and straight.cfg.train.reference_cache == "memory"  # the default
    straight.train(progress=False)
    assert straight.method.cache.hits > 0  # pairs recurred: steps after the checkpoint read cached references
    resumed = interrupted_then_resumed(tiny_dir, tmp_path / "b", 3, **extra)
    assert resumed.method.cache.hits > 0
    a, b = lora_state(straight.backbone.unet), lora_state(resumed.backbone.unet)
    assert all(torch.equal(a[n], b[n]) for n in a)
    spilled = list((tmp_path / "b" / "checkpoints" / "reference-cache").rglob("*.safetensors"))
    assert 0 < len(spilled) <= 2 * 2  # the pool's pairs, each written once
