"""Memory bounds of training (issue 16): the reference cache holds only what the loss reads, in a compact
dtype, within a byte budget, and only when pairs can recur; prompts are encoded once per step; the
finiteness checks and the per-row adapter mask cost one host sync / one copy per step, not per tensor."""
import torch
from conftest import base_overrides

from focusnfix.training.cache import ReferenceCache, compact, entry_bytes, expand
from focusnfix.config import load_config
from focusnfix.backbones.lora import adapters_per_row
from focusnfix.methods import FocusNFix, Reference
from focusnfix.methods.fnf import _pick
from focusnfix.sampling import grad_checkpointing_on
from focusnfix.training.trainer import Trainer

# GRAD_RTOL (as in test_training.py): the relative L2 gap of two LoRA gradients whose computations differ
# only in how float32 kernels block their sums (here: the text encoder run on B instead of 2B rows, which
# may round each embedding a few ulps, eps = 1.2e-7, differently); through the few hundred float32 ops in
# sequence of T = 4 UNet calls, the decoder and K = 2 backward calls that stays below ~1e3 eps = 1e-4.
# A real bug (a wrong row of the conditioning, a lost or soft-thresholded mask, another reference image)
# moves the gradient by order 1e-1..1 (checked below: swapping the two prompts' rows gives > 1e-2).
GRAD_RTOL = 1e-4


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def _entry(side: int, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(side)
    images = torch.rand((3, side, side), generator=g)
    return {"images": images, "mask": (images[:1] > 0.5).float() if mask is None else mask,
            "heatmap": images[:1].clone()}


# -- 1. the cache: compact entries, byte budget --------------------------------------------------------
def test_entries_are_compact_and_lossless():
    binary = _entry(16)
    stored = compact(binary)
    assert set(stored) == {"images", "mask"}  # the heatmap is never stored
    assert stored["mask"].dtype == torch.uint8 and stored["images"].dtype == torch.float32
    assert entry_bytes(stored) == 3 * 16 * 16 * 4 + 16 * 16  # 3.25 MiB at 512 px instead of 5 x 1 MiB
    back = expand(stored, "cpu")
    assert torch.equal(back["images"], binary["images"]) and torch.equal(back["mask"], binary["mask"])
    soft = _entry(16, mask=torch.rand((1, 16, 16), generator=torch.Generator().manual_seed(1)))  # mask.blur > 0
    kept = compact(soft)
    assert kept["mask"].dtype == torch.float32 and torch.equal(expand(kept, "cpu")["mask"], soft["mask"])


def test_cache_byte_budget_is_enforced_lru(tmp_path):
    size = entry_bytes(compact(_entry(16)))
    cache = ReferenceCache("f" * 64, max_bytes=int(2.5 * size))
    for seed in range(5):
        cache.put("p", seed, _entry(16))
        assert cache.bytes <= cache.max_bytes and cache.bytes == sum(entry_bytes(e) for e in cache.memory.values())
        if seed == 3:
            assert cache.get("p", 2) is not None  # 2 becomes the most recently used: 3 goes next
    assert list(cache.memory) == [ReferenceCache.key("p", s) for s in (2, 4)]
    assert [cache.get("p", s) is not None for s in range(5)] == [False, False, True, False, True]
    big = ReferenceCache("f" * 64, max_bytes=size - 1)
    big.put("p", 0, _entry(16))  # larger than the whole budget: not kept
    assert big.bytes == 0 and not big.memory
    items = ReferenceCache("f" * 64, max_bytes=10 * size, max_items=1)  # the deprecated item limit still holds
    items.put("p", 0, _entry(16))
    items.put("p", 1, _entry(16))
    assert list(items.memory) == [ReferenceCache.key("p", 1)]
    disk = ReferenceCache("f" * 64, tmp_path, max_bytes=0)  # disk only: nothing in memory, still a hit later
    disk.put("p", 0, _entry(16))
    assert not disk.memory and disk.bytes == 0
    again = ReferenceCache("f" * 64, tmp_path, max_bytes=0)
    assert torch.equal(again.get("p", 0)["images"], _entry(16)["images"]) and not again.memory


def test_cache_only_where_pairs_recur(tiny_dir, tmp_path):
    """Fresh seeds (no data.seed_pool): no memory cache, so nothing accumulates over a run; a folder is a
    disk-only cache; a seed pool keeps entries within train.reference_cache_mb."""
    fresh = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "a")))
    assert fresh.method.cache is None
    fresh.train_step()
    fresh.train_step()
    disk = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "b",
                                                    **{"train.reference_cache": str(tmp_path / "refs")})))
    disk.train_step()
    disk.train_step()
    assert disk.method.cache.max_bytes == 0 and not disk.method.cache.memory
    assert len(list((tmp_path / "refs").rglob("*.safetensors"))) == 2 * 1  # 2 steps x batch 1, all different
    pool = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "c",
                                                    **{"data.seed_pool": 1, "train.reference_cache_mb": 0.05})))
    for _ in range(4):
        pool.train_step()
    cache = pool.method.cache
    # 2 pairs, 32 px: 13 KiB each
    assert 1 <= len(cache.memory) <= 2 and cache.bytes <= 0.05 * 2**20 and cache.hits >= 2


def test_old_reference_cache_items_key_still_loads(tiny_dir, tmp_path, recwarn):
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run",
                                           **{"train.reference_cache_items": 8, "data.seed_pool": 4}))
    t = Trainer(cfg)
    assert t.method.cache.max_items == 8 and t.method.cache.max_bytes == 1024 * 2**20
    assert [str(w.message).startswith("train.reference_cache_items is deprecated") for w in recwarn].count(True) == 1


# -- 2. prompts encoded once; one host sync per finiteness check; one mask copy per step -------------------
class _PreviousFocusNFix(FocusNFix):
    """The cold path as it was before issue 16 (the oracle): prompts encoded for the batched pass
    (2B rows), again for the reference (B rows) and looked up for the trained pass; float32 cache entries
    with the heatmap."""

    def reference_and_trained(self, prompts, seeds, k, capture=None):
        assert capture is None  # objective.trajectory_weight is off here (it postdates this path)
        entries, missing = self._lookup(prompts, seeds)
        s, split = self.cfg.sampler, self.cfg.sampler.steps - k
        if not (missing and self.batch_reference and split > 0):
            if missing:
                self._store(entries, missing, prompts, seeds, self._compute_reference(*_pick(missing, prompts, seeds)))
            return self._stack(entries), self.trained_images(prompts, seeds, k)
        ref_prompts, ref_seeds = _pick(missing, prompts, seeds)
        active = torch.tensor([0.0] * len(missing) + [1.0] * len(prompts))
        from focusnfix.sampling import sample

        with torch.no_grad(), adapters_per_row(self.backbone.unet, active):
            cond = self.backbone.encode(ref_prompts + prompts, s.negative_prompt, s.guidance_scale)
            x = sample(self.backbone, cond, self.backbone.initial_noise(ref_seeds + seeds), s.steps, last=split)
        fresh = self._compute_reference(ref_prompts, ref_seeds, latents=x[: len(missing)], first=split)
        self._store(entries, missing, prompts, seeds, fresh)
        return self._stack(entries), self.trained_images(prompts, seeds, k, latents=x[len(missing):], first=split)

    def _store(self, entries, missing, prompts, seeds, fresh):
        for j, i in enumerate(missing):
            entries[i] = {"images": fresh.images[j], "mask": fresh.mask[j], "heatmap": fresh.heatmap[j]}
            if self.cache is not None:
                self.cache[(prompts[i], seeds[i])] = {k: v.detach().cpu() for k, v in entries[i].items()}

    def _lookup(self, prompts, seeds):
        entries = [self.cache.get((p, s)) for p, s in zip(prompts, seeds)]
        return entries, [i for i, e in enumerate(entries) if e is None]

    def _stack(self, entries):
        stack = lambda key: torch.stack([e[key] for e in entries]).to(self.backbone.device)  # noqa: E731
        return Reference(images=stack("images"), mask=stack("mask"), heatmap=stack("heatmap"))


def _trainer(tiny_dir, out, previous=False, **extra):
    values = {"data.seed_pool": 1, "train.batch_size": 2, "train.seed": 1, **extra}  # step 0: two different prompts
    t = Trainer(load_config(None, base_overrides(tiny_dir, out, **values)))
    if previous:
        t.method = _PreviousFocusNFix(t.backbone, t.reward, t.cfg)
        t.method.cache = {}
    gen = torch.Generator().manual_seed(0)  # a LoRA well away from B = 0, where Î = Î0 (test_training._step_gradient)
    with torch.no_grad():
        for p in t.params:
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return t


def _grad(t: Trainer) -> torch.Tensor:
    t.optimizer.zero_grad(set_to_none=True)
    t.accumulate_gradients()
    return torch.cat([p.grad.flatten() for p in t.params])


def test_memory_saving_path_gives_the_previous_gradients(tiny_dir, tmp_path):
    """Two SGD steps (lr 0.05 on the raw gradient) with the new path (one encoding, compact cache, one
    finiteness read) and with the previous one: step 1 is a cache miss (batched reference pass), step 2
    a hit (seed_pool = 1: the same pairs); each step's gradient and the LoRA after both are equal within
    GRAD_RTOL (relative, see above; the LoRA's change is lr x gradient, so its gap is bounded by the
    gradients')."""
    for batched in (True, False):
        new = _trainer(tiny_dir, tmp_path / f"new{batched}", **{"train.batch_reference": batched})
        old = _trainer(tiny_dir, tmp_path / f"old{batched}", previous=True, **{"train.batch_reference": batched})
        start = torch.cat([p.detach().flatten() for p in new.params])
        for step in range(2):
            new.step = old.step = 0  # the same batch both times: step 2 reads step 1's references from the caches
            a, b = _grad(new), _grad(old)
            assert a.norm() > 0 and _gap(a, b) <= GRAD_RTOL, (batched, step, _gap(a, b))
            with torch.no_grad():
                for t in (new, old):
                    for p in t.params:
                        p.sub_(0.05 * p.grad)
        assert new.method.cache.hits == 2 and new.method.cache.misses == 2  # batch of 2 pairs, then 2 hits
        assert all(e["mask"].dtype == torch.uint8 for e in new.method.cache.memory.values())
        wa, wb = (torch.cat([p.detach().flatten() for p in t.params]) for t in (new, old))
        assert _gap(wa - start, wb - start) <= GRAD_RTOL
    # the check can fail: the conditioning rows of the two prompts swapped move the gradient by far more
    from focusnfix import methods

    swapped = _trainer(tiny_dir, tmp_path / "swap")
    real = methods.fnf.conditioning_rows
    methods.fnf.conditioning_rows = lambda cond, index: real(cond, [1 - i for i in index])
    try:
        c = _grad(swapped)
    finally:
        methods.fnf.conditioning_rows = real
    base = _grad(_trainer(tiny_dir, tmp_path / "base"))
    assert _gap(base, c) > 1e-2


class _TextRows:
    def __init__(self, module):
        self.rows, self.calls = 0, 0
        module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        self.rows += int(args[0].shape[0])


def test_prompts_are_encoded_once_per_step(tiny_dir, tmp_path):
    """A cold step (every reference missing) with B = 2 prompts: the text encoder sees B rows (plus B rows
    of the negative prompt under CFG), not 3B (the batched pass's 2B, then the reference's B)."""
    for guidance, per_prompt in ((1.0, 1), (7.5, 2)):
        for batched in (True, False):
            t = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / f"r{guidance}{batched}", **{
                "train.batch_size": 2, "sampler.guidance_scale": guidance, "train.batch_reference": batched,
                "data.prompts": "[a red circle, a blue square, a green dot]"})))
            counter = _TextRows(t.backbone.text_encoder)
            t.train_step()
            assert counter.rows == 2 * per_prompt, (guidance, batched, counter.rows)


def test_one_host_read_per_finiteness_check_and_same_decisions(tiny_dir, tmp_path, monkeypatch):
    t = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "run")))
    t.accumulate_gradients()
    assert len(t.params) > 4
    reads = []
    for name in ("__bool__", "item", "tolist"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _real=real, _n=name, **k: (reads.append(_n), _real(self, *a, **k))[1])
    assert t._average_gradients(0.0) == (True, True) and len(reads) == 1
    reads.clear()
    assert t._norm_and_weights_finite(torch.tensor(2.0))[1] is True and len(reads) == 1
    monkeypatch.undo()
    for bad in (float("nan"), float("inf")):  # any one element of any one tensor flips the decision
        for p in (t.params[0], t.params[-1]):
            saved = p.grad.clone()
            p.grad.view(-1)[-1] = bad
            assert t._average_gradients(0.0) == (True, False)
            p.grad.copy_(saved)
            with torch.no_grad():
                value = p.view(-1)[0].item()
                p.view(-1)[0] = bad
                assert t._norm_and_weights_finite(torch.tensor(1.0)) == (1.0, False)
                p.view(-1)[0] = value
    assert t._average_gradients(0.0) == (True, True) and t._norm_and_weights_finite(torch.tensor(1.0)) == (1.0, True)


def test_per_row_mask_is_copied_once_not_per_layer(tiny_dir, tmp_path, monkeypatch):
    t = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "run")))
    bb = t.backbone
    layers = sum(1 for n, _ in bb.unet.named_modules() if n.endswith("lora_B.default"))
    active = torch.tensor([0.0, 1.0, 1.0])  # 3 rows: no other 1-D tensor of 3 elements in the UNet (CFG: 6 rows)
    copies = []
    real = torch.Tensor.to

    def to(self, *args, **kwargs):
        if self.ndim == 1 and self.numel() == 3:
            copies.append(1)
        return real(self, *args, **kwargs)

    with torch.no_grad():
        cond, x = bb.encode(["a", "b", "c"], "", 5.0), bb.initial_noise([1, 2, 3])
        monkeypatch.setattr(torch.Tensor, "to", to)
        with adapters_per_row(bb.unet, active):
            for step in (999, 500):
                bb.model_fn(x, torch.tensor(step), cond)
    assert layers > 4 and len(copies) <= 2, (layers, len(copies))  # once in, once per layout (was layers x calls)


# -- 3. sampler.grad_checkpointing: auto ---------------------------------------------------------------
def test_grad_checkpointing_auto(tiny_dir, tmp_path):
    assert [grad_checkpointing_on("auto", k) for k in (1, 3, 4, 8)] == [False, False, True, True]
    assert grad_checkpointing_on(True, 1) and not grad_checkpointing_on(False, 8)
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "a", **{"sampler.grad_checkpointing": "auto"}))
    assert cfg.sampler.grad_checkpointing == "auto"
    assert load_config(None, base_overrides(tiny_dir, tmp_path / "b",
                                            **{"sampler.grad_checkpointing": "yes"})).sampler.grad_checkpointing is True
    import pytest

    from focusnfix.errors import ConfigError

    with pytest.raises(ConfigError, match="sampler.grad_checkpointing must be true, false or auto"):
        load_config(None, base_overrides(tiny_dir, tmp_path / "c", **{"sampler.grad_checkpointing": "sometimes"}))
