"""GPU paths (marker ``cuda``: skipped without a CUDA device; `pytest -m cuda` or benchmarks/gpu_check.py
runs them). CPU results are pinned elsewhere; here the GPU must agree with the CPU within float noise
(cuDNN may use TF32 convolutions) and half precision must give finite, close images."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import base_overrides
from PIL import Image

from focusnfix.cli import main
from focusnfix.devices import resolve_device

pytestmark = pytest.mark.cuda
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "world-artifact.yaml")
PROMPTS = ["a small red circle on the left, blue background", "a big green square in the center, white background"]


def _pngs(folder):
    return {p.relative_to(folder): np.asarray(Image.open(p), dtype=np.float32) / 255
            for p in sorted(folder.rglob("*.png"))}


def test_auto_picks_the_gpu():
    assert resolve_device("auto").type == "cuda" and resolve_device("cuda:0") == torch.device("cuda", 0)


def test_eval_on_the_gpu_agrees_with_the_cpu(tmp_path):
    argv = ["eval", "--config", CONFIG, "--methods", "base", "sld:medium", "--prompts", "world:heldout",
            "--limit", "4", "--seeds", "0", "1", "--no-progress", "--batch-size", "4"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    assert main([*argv, "--device", "cuda", "--out", str(tmp_path / "gpu")]) == 0
    runtime = json.loads((tmp_path / "gpu" / "eval.json").read_text())["runtime"]
    assert runtime["device"].startswith("cuda") and runtime["peak_gpu_mb"] > 0
    cpu, gpu = _pngs(tmp_path / "cpu" / "images"), _pngs(tmp_path / "gpu" / "images")
    assert cpu.keys() == gpu.keys() and len(cpu) == 16
    assert max(np.abs(cpu[k] - gpu[k]).mean() for k in cpu) < 0.01
    rows = {d: [json.loads(x) for x in (tmp_path / d / "samples.jsonl").read_text().splitlines()]
            for d in ("cpu", "gpu")}
    for a, b in zip(rows["cpu"], rows["gpu"]):
        assert (a["method"], a["prompt"], a["seed"]) == (b["method"], b["prompt"], b["seed"])
        assert abs(a["reward"] - b["reward"]) < 0.25  # world artifact reward: -(% of area flagged)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_sample_on_the_gpu_in_half_precision(tmp_path, dtype):
    args = ["sample", "--model", "world", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seeds", "0", "1",
            "--steps", "10", "--guidance-scale", "5", "--no-progress", "--batch-size", "4"]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "ref")]) == 0
    assert main([*args, "--device", "cuda", "--dtype", dtype, "--out", str(tmp_path / dtype)]) == 0
    ref, half = _pngs(tmp_path / "ref"), _pngs(tmp_path / dtype)
    assert ref.keys() == half.keys() and len(ref) == 4
    assert all(np.isfinite(half[k]).all() and np.abs(half[k] - ref[k]).mean() < 0.05 for k in ref)


def test_rewards_and_judges_follow_the_images_to_the_gpu():
    from focusnfix.rewards import ClassifierReward, ColorReward
    from focusnfix.world import AlignmentOracle, DefectJudge
    from focusnfix.world.rewards import WorldArtifactReward, WorldSafetyReward

    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    for reward in (ColorReward(), ClassifierReward(net), WorldArtifactReward(), WorldSafetyReward()):
        cpu = reward(images, PROMPTS).score
        gpu = reward(images.cuda(), PROMPTS).score
        assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, rtol=1e-2, atol=1e-3), type(reward).__name__
    oracle, judge = AlignmentOracle(), DefectJudge()
    assert torch.equal(oracle(images.cuda(), PROMPTS).fraction.cpu(), oracle(images, PROMPTS).fraction)
    assert torch.allclose(judge(images.cuda())["artifact"].cpu(), judge(images)["artifact"], atol=1e-3)


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_training_steps_on_the_gpu(tiny_dir, tmp_path, precision):
    run = tmp_path / "run"
    assert main(["train", "--no-progress", *base_overrides(tiny_dir, run, **{"train.mixed_precision": precision})]) == 0
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(logs) == 2 and all(np.isfinite(r["loss"]) for r in logs)


def test_eval_resume_on_the_gpu(tiny_dir, tmp_path, monkeypatch):
    import focusnfix.sampling

    real, calls = focusnfix.sampling.generate, []

    def flaky(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    run = tmp_path / "run"
    assert main(["train", "--no-progress", *base_overrides(tiny_dir, run)]) == 0
    argv = ["eval", "--config", str(run), "--methods", "base", f"fnf={run}", "--seeds", "1", "2", "--batch-size", "2",
            "--device", "cuda", "--no-progress", "--out", str(tmp_path / "eval")]
    monkeypatch.setattr(focusnfix.sampling, "generate", flaky)
    assert main(argv) == 130
    monkeypatch.setattr(focusnfix.sampling, "generate", real)
    assert main(argv) == 0
    rows = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["method"] for r in rows} == {"base", "fnf"}
