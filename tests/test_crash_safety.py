"""Crash safety: SIGKILL at several points (one during a checkpoint write), then --resume, ends
with the same LoRA as an uninterrupted run; corrupted checkpoints are skipped; NaN steps skipped."""
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import base_overrides

from focusnfix.runs.checkpoint import latest_checkpoint
from focusnfix.config import load_config
from focusnfix.backbones.lora import lora_state
from focusnfix.training.trainer import Trainer

EXTRA = {"train.steps": 5, "train.checkpoint_every": 1, "train.keep_checkpoints": 2, "sampler.k_max": 3}


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, tmp_path_factory):
    trainer = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path_factory.mktemp("straight") / "run", **EXTRA)))
    trainer.train(progress=False)
    return lora_state(trainer.backbone.unet)


def _killed_run(tiny_dir, out, fault):
    env = {**os.environ, "FOCUSNFIX_FAULT": fault, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "focusnfix", "train", "--no-progress", *base_overrides(tiny_dir, out, **EXTRA)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _resume(tiny_dir, out):
    trainer = Trainer(load_config(None, base_overrides(tiny_dir, out, **EXTRA)))
    trainer.train(resume=True, progress=False)
    return lora_state(trainer.backbone.unet)


@pytest.mark.parametrize("fault", ["checkpoint-middle@3", "after-step@4"])
def test_sigkill_then_resume_matches_uninterrupted(tiny_dir, tmp_path, uninterrupted, fault):
    out = tmp_path / "run"
    _killed_run(tiny_dir, out, fault)
    if fault.startswith("checkpoint-middle"):
        assert (out / "checkpoints" / ".tmp-step-000003").is_dir()  # the half-written checkpoint
        assert latest_checkpoint(out / "checkpoints").name == "step-000002"
    resumed = _resume(tiny_dir, out)
    assert max((resumed[n] - uninterrupted[n]).abs().max().item() for n in resumed) <= 1e-6
    assert not list((out / "checkpoints").glob(".tmp-*"))
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_corrupted_newest_checkpoint_is_skipped(tiny_dir, tmp_path, uninterrupted):
    out = tmp_path / "run"
    _killed_run(tiny_dir, out, "after-step@4")  # checkpoints of steps 2 and 3 remain (keep 2)
    newest = out / "checkpoints" / "step-000003" / "lora.safetensors"
    data = bytearray(newest.read_bytes())
    data[-10:] = b"\x00" * 10
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="skipping incomplete or corrupted checkpoint"):
        resumed = _resume(tiny_dir, out)
    assert max((resumed[n] - uninterrupted[n]).abs().max().item() for n in resumed) <= 1e-6


def test_damaged_checkpoint_with_a_rewritten_manifest_falls_back(tiny_dir, tmp_path, uninterrupted):
    """Issue 26 #8: a checkpoint whose file was damaged and whose manifest was rewritten to match passes the
    checksum test; it used to stop the resume with status 1 ("unexpected ..."). Found automatically it is skipped for
    the next older checkpoint; named explicitly it is refused with one line (status 2) and nothing changes."""
    import json

    from focusnfix.runs.checkpoint import MANIFEST, sha256

    out = tmp_path / "run"
    _killed_run(tiny_dir, out, "after-step@4")  # checkpoints of steps 2 and 3 remain (keep 2)
    newest = out / "checkpoints" / "step-000003"
    (newest / "optimizer.json").write_text('{"param_groups": [')  # torn JSON
    manifest = json.loads((newest / MANIFEST).read_text())
    manifest["files"]["optimizer.json"] = sha256(newest / "optimizer.json")
    (newest / MANIFEST).write_text(json.dumps(manifest))
    assert latest_checkpoint(out / "checkpoints") == newest  # the checksums pass

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    files = lambda: {f: f.read_bytes() for f in out.rglob("*") if f.is_file() and f.name != ".lock"}  # noqa: E731
    before = files()
    named = subprocess.run([sys.executable, "-m", "focusnfix", "train", "--no-progress",
                            *base_overrides(tiny_dir, out, **EXTRA), "--resume", str(newest)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert named.returncode == 2, named.stderr[-2000:]
    assert len(named.stderr.strip().splitlines()) == 1 and "cannot be read" in named.stderr
    assert files() == before  # nothing changed (the killed run's stale .lock aside)

    with pytest.warns(UserWarning, match="step-000003.? matches its manifest but cannot be read"):
        resumed = _resume(tiny_dir, out)
    assert max((resumed[n] - uninterrupted[n]).abs().max().item() for n in resumed) <= 1e-6
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


class NaNAfter:
    """A reward that turns NaN from the given call on (to test non-finite step handling)."""

    name, differentiable = "nan-after", True

    def __init__(self, start):
        self.calls, self.start = 0, start

    def __call__(self, images, prompts):
        from focusnfix.rewards import RewardOutput

        self.calls += 1
        score = -images.mean((1, 2, 3))
        return RewardOutput(score=score * float("nan") if self.calls >= self.start else score)


def test_nonfinite_steps_are_skipped_then_training_stops(tiny_dir, tmp_path):
    from focusnfix.errors import TrainingDiverged

    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run", **{"method": "draft", "train.steps": 8,
                                                                          "train.checkpoint_every": 1,
                                                                          "train.max_bad_steps": 2}))
    trainer = Trainer(cfg, reward=NaNAfter(start=3))
    with pytest.raises(TrainingDiverged, match="2 consecutive steps"):
        trainer.train(progress=False)
    good = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert good.name == "step-000002"  # no checkpoint after a bad step; the last good one is intact
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert '"skipped": 1.0' in lines[-1] and '"skipped": 0.0' in lines[1]
    params_after_skip = lora_state(trainer.backbone.unet)
    from safetensors.torch import load_file

    saved = load_file(good / "lora.safetensors")
    assert all(torch.equal(saved[n], params_after_skip[n]) for n in saved)  # skipped steps changed nothing
