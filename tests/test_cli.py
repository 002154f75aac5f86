"""The command line end to end: train, resume, sample with the LoRA, demo."""
import json

import numpy as np
from conftest import base_overrides
from PIL import Image

from focusnfix.cli import main


def test_train_then_sample_with_lora(tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--help-config"]) == 0
    assert "train.lr" in capsys.readouterr().out
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  path: {tiny_dir}\n")
    assert main(["train", str(cfg), *base_overrides(tiny_dir, run, **{"train.steps": 3}), "--no-progress"]) == 0
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()
    args = ["--model", str(tiny_dir), "--prompt", "a red circle", "--prompt", "a blue square", "--seeds", "4", "5",
            "--steps", "4"]
    assert main(["sample", *args, "--out", str(tmp_path / "base")]) == 0
    assert main(["sample", *args, "--lora", str(run / "lora"), "--out", str(tmp_path / "tuned")]) == 0
    assert main(["sample", *args, "--lora", str(run / "lora"), "--fuse", "--out", str(tmp_path / "fused")]) == 0
    index = json.loads((tmp_path / "tuned" / "index.json").read_text())
    assert len(index) == 4 and {e["seed"] for e in index} == {4, 5}
    load = lambda d, e: np.asarray(Image.open(tmp_path / d / e["file"]), dtype=np.int16)  # noqa: E731
    assert all(load("tuned", e).shape == (32, 32, 3) for e in index)
    assert any(np.abs(load("tuned", e) - load("base", e)).max() > 0 for e in index)
    assert all(np.abs(load("tuned", e) - load("fused", e)).max() <= 1 for e in index)


def test_cli_resume_extends_a_finished_run(tiny_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--no-progress", *base_overrides(tiny_dir, run, **{"train.steps": 2})]) == 0
    assert main(["train", "--no-progress", "--resume", *base_overrides(tiny_dir, run, **{"train.steps": 3})]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["steps"] == 3


def test_demo_writes_report(tmp_path):
    from focusnfix.cli.demo import main as demo

    assert demo(["--model", "tiny", "--out", str(tmp_path / "demo"), "--steps", "2", "--seeds", "7"]) == 0
    report = tmp_path / "demo" / "eval" / "report.html"
    text = report.read_text()
    rows = [json.loads(x) for x in (tmp_path / "demo" / "eval" / "samples.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"base", "draft", "fnf"} and len(rows) == 3 * 4
    for row in rows:
        assert (report.parent / row["image"]).is_file() and row["image"] in text
