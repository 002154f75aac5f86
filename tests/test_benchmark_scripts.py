"""The benchmark scripts stay runnable: our side of benchmark (b) (benchmarks/trl_alignprop.py) for a
couple of steps at the smallest size. TRL's side needs its own virtualenv and is not run here."""
import importlib.util
import json
import math
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trl_alignprop_our_worker_runs(tmp_path):
    bench = _load("trl_alignprop")
    model = bench.prepare_model(tmp_path / "tiny", 8)
    assert (model / "tokenizer" / "vocab.json").is_file() and (model / "tokenizer" / "merges.txt").is_file()
    from safetensors import safe_open

    with safe_open(str(model / "text_encoder" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())  # transformers 4.x (TRL's env) needs the prefix

    class Args:  # 1 warm-up + 1 timed optimizer step, T = 4, K = 2
        steps, sampler_steps, k, batch, rank, lr, guidance, seed = 1, 4, 2, 1, 4, 1e-3, 5.0, 0

    cmd = bench.worker_command("ours", model, Args)
    import focusnfix

    # works uninstalled too
    env = {**bench.child_env(), "PYTHONPATH": str(Path(focusnfix.__file__).resolve().parents[1])}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["side"] == "ours" and len(res["times"]) == 1 and res["times"][0] > 0
    assert len(res["rewards"]) == 2 and all(math.isfinite(x) for x in res["rewards"])
    assert res["maxrss_mb"] > 0 and res["rss_peak_steps_mb"] >= res["rss_before_steps_mb"] > 0
    assert res["torch_threads"] == 1

    summary = {"32px": {"ours": bench.summarise([res, res]), "trl": bench.summarise([res])}}
    text = bench.table(summary)
    assert "32px" in text and "1.00x" in text


def test_trl_settings_truncate_to_last_k_steps():
    worker = _load("trl_worker")

    class Args:
        sampler_steps, k, seed, guidance, batch, lr = 20, 2, 0, 5.0, 2, 1e-3

    s = worker.trl_settings(Args, "/tmp/x")
    # TRL detaches the UNet output of steps i < truncated_backprop_timestep: steps 18 and 19 keep gradient
    assert s["truncated_backprop_rand"] is False and s["truncated_backprop_timestep"] == 18
    assert s["truncated_rand_backprop_minmax"] == (18, 18)
    assert s["sample_eta"] == 0.0 and s["mixed_precision"] == "no" and s["train_adam_weight_decay"] == 0.0
    assert s["train_gradient_accumulation_steps"] == 1


def test_grpo_step_worker_runs():
    """One warm-up and one timed step of region-aware GRPO on the world model, as the benchmark runs it."""
    res = _load("grpo_step").worker("fnf-grpo", 1, 1)
    assert len(res["seconds"]) == 1 and res["seconds"][0] > 0
    assert res["reward_evaluations"] == 2 * 4 and res["peak_rss_mb"] > 0  # 2 prompts x G = 4


def test_change_origin_splits_a_loras_change_by_steps(tmp_path):
    """benchmarks/change_origin.py on 2 world captions: a LoRA at its init (B = 0) changes nothing in any variant;
    a perturbed one changes the image when on in every step, and the grid has 2 + 2 columns."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer

    t = Trainer(load_config(str(BENCH.parent / "configs" / "world-artifact.yaml"),
                            [f"train.output_dir={tmp_path / 'run'}"]))
    from focusnfix.backbones.lora import lora_state

    names = lora_state(t.backbone.unet)
    (tmp_path / "zero").mkdir()
    save_file({n: v.contiguous() for n, v in names.items()}, str(tmp_path / "zero" / "lora.safetensors"))
    g = torch.Generator().manual_seed(0)
    moved = {n: (torch.randn(v.shape, generator=g) * 0.05 if "lora_B" in n else v) for n, v in names.items()}
    (tmp_path / "moved").mkdir()
    save_file({n: v.contiguous() for n, v in moved.items()}, str(tmp_path / "moved" / "lora.safetensors"))
    del t
    bench = _load("change_origin")
    out, grid = tmp_path / "origin.json", tmp_path / "grid.png"
    assert bench.main([str(tmp_path / "zero"), str(tmp_path / "moved"), "--prompts", "2", "--out", str(out),
                       "--grid", str(grid)]) == 0
    res = json.loads(out.read_text())
    zero, moved = res["runs"][str(tmp_path / "zero")], res["runs"][str(tmp_path / "moved")]
    assert res["images"] == 4 and len(zero) == len(moved) == 4
    assert all(v["outside_grey"] == 0 and v["defect_rate"] == res["base_defect_rate"] for v in zero.values())
    assert moved["every step"]["outside_grey"] > 0
    width, height = Image.open(grid).size
    defects = round(res["base_defect_rate"] * 4)
    rows = min(5, defects) + min(3, 4 - defects)  # up to 5 images with the defect, then up to 3 without
    assert width == 2 * 64 * (2 + 2 * 2) and height == 2 * 64 * rows
