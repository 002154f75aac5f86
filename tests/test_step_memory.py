"""Memory savers of a training step (issue 16.2): gradient checkpointing in row chunks.

Every saver must leave the training where it was: the LoRA gradient of the second optimizer step
equals the default's (no checkpointing) within GRAD_RTOL, and the memory it saves is real (tensor
bytes counted by ``benchmarks/_tensor_memory.py``, which are deterministic: no timing, no RSS)."""
import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import base_overrides

from focusnfix.config import load_config
from focusnfix.sampling import chunked_checkpoint, conditioning_rows
from focusnfix.training.trainer import Trainer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
# Relative L2 gap between two LoRA gradients. A chunk is the same float32 ops on fewer rows: the CPU
# kernels block a batch of 1 or 2 rows otherwise, so each of the few hundred ops in sequence (T = 4 UNet
# calls, K = 2 of them and the VAE decoder with backward) may round a few ulps (eps = 1.2e-7)
# differently: ~1e3 eps = 1e-4. Step 2 starts from weights that step 1's Adam moved by
# lr * g / (|g| + adam_eps): with adam_eps = 1e-4 a gradient difference dg moves a weight by at most
# lr / adam_eps * dg = 100 dg (lr 1e-2), so step 1's rounding (<= 1e-4 relative, entries |g| <= ~1)
# reaches step 2's gradient as a change of the same relative order; 2e-4 covers both steps. A chunk
# recomputed with other rows, conditioning or weights changes the gradient by order 1.
GRAD_RTOL = 2e-4
TWO_STEP = {"train.batch_size": 2, "train.adam_eps": 1e-4, "train.reference_cache": "off"}


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def _second_step_gradient(tiny_dir, out, chunks: int | None = None, **extra) -> torch.Tensor:
    """The LoRA gradient of optimizer step 2, from a fixed LoRA away from its init (as test_training's
    ``_step_gradient``: at B = 0, Î equals Î0 where the constraint's norm has no gradient)."""
    t = Trainer(load_config(None, base_overrides(tiny_dir, out, **{**TWO_STEP, **extra})))
    if chunks is not None:
        t.method.checkpoint_chunks = chunks
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in t.params:
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    t.train_step()
    t.accumulate_gradients()
    return torch.cat([p.grad.flatten() for p in t.params])


def test_checkpointing_in_row_chunks_gives_the_same_training(tiny_dir, tmp_path):
    """K UNet calls and the VAE decode checkpointed whole (1 chunk), in 2 chunks (the default) and one
    row per chunk: the second step's LoRA gradient equals the unchecked one's within GRAD_RTOL."""
    ckpt = {"sampler.grad_checkpointing": True, "sampler.vae_checkpointing": True}
    reference = _second_step_gradient(tiny_dir, tmp_path / "plain")
    assert reference.norm() > 0
    for chunks in (1, 2):
        got = _second_step_gradient(tiny_dir, tmp_path / f"c{chunks}", chunks=chunks, **ckpt)
        assert _gap(reference, got) <= GRAD_RTOL, (chunks, _gap(reference, got))
    got = _second_step_gradient(tiny_dir, tmp_path / "draft", chunks=2, method="draft", **ckpt)  # DRaFT's own
    plain = _second_step_gradient(tiny_dir, tmp_path / "draft-plain", method="draft")
    assert _gap(plain, got) <= GRAD_RTOL


def test_checkpoint_chunks_equal_one_call_and_route_each_rows_conditioning(tiny_dir, tmp_path):
    """Chunked output equals the one-call output (images' rounding, 1e-4 on unit-scale values, as
    test_cache's IMG_TOL); with the conditioning of the wrong rows it would differ by order 1."""
    t = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "run", **{"sampler.guidance_scale": 5.0})))
    bb = t.backbone
    cond = bb.encode(["a red circle", "a blue square", "a red circle"], "", 5.0)
    x = bb.initial_noise([1, 2, 3])
    step = torch.tensor(500)
    calls = []

    def fn(x_, t_, c_):
        calls.append(x_.shape[0])
        return bb.model_fn(x_, t_, c_)

    with torch.enable_grad():
        whole = bb.model_fn(x, step, cond)
        parts = chunked_checkpoint(fn, x, step, cond, chunks=2)
    assert calls == [2, 1] and parts.requires_grad
    assert torch.allclose(whole, parts, rtol=0, atol=1e-4)
    swapped = bb.model_fn(x, step, conditioning_rows(cond, [1, 0, 2]))
    assert (swapped - whole).abs().max() > 1e-2  # the check can fail


def _meter():
    spec = importlib.util.spec_from_file_location("_tensor_memory", BENCH / "_tensor_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TensorMeter()


@pytest.mark.parametrize("vae", [False, True])
def test_row_chunks_cut_the_checkpointed_peak(tiny_dir, tmp_path, vae):
    """Tensor bytes a checkpointed step holds at its peak: 2 row chunks hold less than one whole call
    (the recomputation of one chunk instead of the whole batch). Counted, not timed: deterministic."""
    peaks = {}
    for chunks in (1, 2):
        t = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / f"r{chunks}{vae}", **{
            **TWO_STEP, "sampler.grad_checkpointing": True, "sampler.vae_checkpointing": vae})))
        t.method.checkpoint_chunks = chunks
        t.train_step()  # the optimizer's moments exist before the metered step
        meter = _meter()
        with meter:
            t.train_step()
        peaks[chunks] = meter.peak
    assert peaks[2] < 0.85 * peaks[1], peaks


@pytest.mark.parametrize("family, extra", [("tiny_sd3_dir", {"sampler.guidance_scale": 5.0}),
                                           ("tiny_flux_dir", {"sampler.guidance_scale": 3.5, "model.resolution": 32})])
def test_row_chunks_on_flow_transformers(request, tmp_path, family, extra):
    """The same equality for the flow families (SD3's pooled projections under CFG, FLUX's per-row
    guidance and shared text ids are split with the rows)."""
    path = request.getfixturevalue(family)
    ckpt = {"sampler.grad_checkpointing": True, "sampler.vae_checkpointing": True, **extra}
    reference = _second_step_gradient(path, tmp_path / "plain", **extra)
    got = _second_step_gradient(path, tmp_path / "chunked", chunks=2, **ckpt)
    assert reference.norm() > 0 and _gap(reference, got) <= GRAD_RTOL, _gap(reference, got)
