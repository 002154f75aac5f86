"""objective.lam_warmup: λ ramps linearly from 0 (step 0 = DRaFT) to λ (steps >= warmup); 0 = off = the paper.

Compared by the LoRA gradient of one step (trainer.accumulate_gradients) from the same fixed LoRA, never by
weights after Adam steps. Where two paths run the same float32 operations in the same process (λ·1.0 is λ;
λ·0 drops the constraint term as DRaFT does) the gradients are compared for equality. Where they differ
in the order of operations (a batched reference pass; one backward of -r + aC against a combination of two
backwards) the bound is test_training's GRAD_RTOL = 1e-4 on the relative L2 gap: a few ulps
(eps = 1.2e-7) per op over ~1e3 float32 ops in sequence; measured gaps are ~1e-6. A wrong schedule is off
by order 1 (the full-λ and DRaFT gradients differ by > 10 % here, asserted).
"""
import json

import pytest
import torch
from conftest import base_overrides

from focusnfix.config import load_config
from focusnfix.errors import ConfigError
from focusnfix.training.trainer import Trainer

GRAD_RTOL = 1e-4
LAM = 2.5


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def _gradient(tiny_dir, out, step: int, **extra) -> tuple[torch.Tensor, dict]:
    """(LoRA gradient, logs) of optimizer step ``step`` from a fixed LoRA well away from B = 0, where
    Î = Î0 and the constraint's gradient is rounding noise (test_training._step_gradient)."""
    values = {"objective.lam": LAM, **extra}
    trainer = Trainer(load_config(None, base_overrides(tiny_dir, out, **values)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.params:
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    trainer.step = step
    logs = trainer.accumulate_gradients()
    return torch.cat([p.grad.flatten() for p in trainer.params]), logs


def test_warmup_off_is_the_default_and_uses_full_lambda_from_step_0(tiny_dir, tmp_path):
    default, logs_default = _gradient(tiny_dir, tmp_path / "default", 0)
    off, logs_off = _gradient(tiny_dir, tmp_path / "off", 0, **{"objective.lam_warmup": 0})
    assert torch.equal(default, off) and logs_default["loss"] == logs_off["loss"]
    assert "lam" not in logs_off  # no new metrics column when the schedule is off
    draft, _ = _gradient(tiny_dir, tmp_path / "draft", 0, method="draft")
    assert _gap(off, draft) > 0.1  # the constraint acts at step 0: off is not a warm-up


def test_warmup_starts_at_draft_and_reaches_full_lambda(tiny_dir, tmp_path):
    # batch_reference off: the warm-up run's Î then comes from the same UNet calls as DRaFT's, so step 0
    # (λ·0: the constraint term is dropped) is DRaFT's gradient exactly
    exact = {"objective.lam_warmup": 4, "train.batch_reference": False}
    warm0, logs0 = _gradient(tiny_dir, tmp_path / "w0", 0, **exact)
    draft0, logs_d = _gradient(tiny_dir, tmp_path / "d0", 0, method="draft")
    assert torch.equal(warm0, draft0) and logs0["loss"] == logs_d["loss"] and logs0["lam"] == 0.0
    # the default batched reference pass: Î from a batch with the θ0 rows, equal up to rounding
    batched, _ = _gradient(tiny_dir, tmp_path / "b0", 0, **{"objective.lam_warmup": 4})
    assert _gap(draft0, batched) <= GRAD_RTOL

    for step in (4, 6):  # min(1, s / 4) = 1.0 exactly: the full-λ run's arithmetic
        warm, logs_w = _gradient(tiny_dir, tmp_path / f"w{step}", step, **{"objective.lam_warmup": 4})
        full, logs_f = _gradient(tiny_dir, tmp_path / f"f{step}", step)
        assert torch.equal(warm, full) and logs_w["loss"] == logs_f["loss"] and logs_w["lam"] == LAM


def test_warmup_is_linear_in_between(tiny_dir, tmp_path):
    """Step 1 of 4: λ/4, so the gradient is g_DRaFT + (g_full - g_DRaFT) / 4 (the loss is linear in λ)."""
    same = {"train.batch_reference": False}
    warm, logs = _gradient(tiny_dir, tmp_path / "w", 1, **{"objective.lam_warmup": 4, **same})
    full, _ = _gradient(tiny_dir, tmp_path / "f", 1, **same)
    draft, _ = _gradient(tiny_dir, tmp_path / "d", 1, method="draft")
    assert logs["lam"] == LAM / 4
    assert _gap(warm, draft + (full - draft) / 4) <= GRAD_RTOL
    assert _gap(full, draft) > 0.1 and _gap(warm, draft) > 0.02  # the check can tell the steps apart


def test_resume_continues_the_schedule(tiny_dir, tmp_path):
    """The schedule is a function of the optimizer step, which a checkpoint restores."""
    out = tmp_path / "run"
    extra = {"objective.lam": LAM, "objective.lam_warmup": 4, "train.checkpoint_every": 1, "train.steps": 3}
    Trainer(load_config(None, base_overrides(tiny_dir, out, **extra))).train(progress=False)
    extra["train.steps"] = 6  # a longer budget on resume (an allowed change)
    Trainer(load_config(None, base_overrides(tiny_dir, out, **extra))).train(resume=True, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["lam"] for r in rows] == [LAM * min(1.0, s / 4) for s in range(6)]


@pytest.mark.parametrize("override, message", [
    (["objective.lam_warmup=-1"], "objective.lam_warmup must be >= 0"),
    (["objective.lam_warmup=10", "method=draft"], "method=fnf only"),
    (["objective.lam_warmup=10", "method=grpo"], "method=fnf only"),
])
def test_bad_warmup_is_one_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.path=tiny", "data.prompts=[a]", *override])
