"""Command-line details (issue 19.6): sample defaults from a run folder, --lora-scale, --help-config with a
config's values, --resume CHECKPOINT, strict JSON in metrics.jsonl."""
import json
import math

import numpy as np
import pytest
from conftest import base_overrides
from PIL import Image

from focusnfix.cli import main

PROMPTS = ["--prompt", "a red circle", "--prompt", "a blue square", "--seeds", "4", "5"]


def _strict(text: str):
    """json.loads that refuses NaN / Infinity (they are not JSON)."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _images(folder):
    index = json.loads((folder / "index.json").read_text())
    return [np.asarray(Image.open(folder / e["file"]), dtype=np.int16) for e in index]


def _max_diff(a, b):
    return max(int(np.abs(x - y).max()) for x, y in zip(_images(a), _images(b)))


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory):
    """A 3-step tiny run with a checkpoint per step, sampled at 4 steps, guidance 3 and a negative prompt."""
    out = tmp_path_factory.mktemp("nits") / "run"
    extra = {"train.steps": 3, "train.checkpoint_every": 1, "train.keep_checkpoints": 3, "train.lr": 0.05,
             "sampler.guidance_scale": 3.0, "sampler.negative_prompt": "blurry"}
    assert main(["train", *base_overrides(tiny_dir, out, **extra), "--no-progress"]) == 0
    return out


def test_sample_takes_the_runs_sampler_settings_unless_given(run, tiny_dir, tmp_path, capsys):
    assert main(["sample", "--lora", str(run), *PROMPTS, "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("sample: from"))
    for part in ("model.path=", "sampler.steps=4", "sampler.guidance_scale=3", "sampler.negative_prompt='blurry'"):
        assert part in line
    explicit = ["--model", str(tiny_dir), "--steps", "4", "--guidance-scale", "3", "--negative-prompt", "blurry"]
    assert main(["sample", "--lora", str(run / "lora"), *explicit, *PROMPTS, "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    assert _max_diff(tmp_path / "a", tmp_path / "b") == 0
    # an explicit flag wins and is not reported as taken from the run
    assert main(["sample", "--lora", str(run), "--steps", "2", *PROMPTS, "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("sample: from"))
    assert "sampler.steps" not in line and "sampler.guidance_scale=3" in line
    assert _max_diff(tmp_path / "a", tmp_path / "c") > 0


def test_sample_without_model_or_run_is_one_line(run, tmp_path, capsys):
    assert main(["sample", "--lora", str(run / "lora"), *PROMPTS, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--model" in err and "RUN_DIR" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
def test_lora_scale_zero_is_the_base_model_and_one_is_the_default(run, tiny_dir, tmp_path, fuse):
    common = ["--model", str(tiny_dir), "--steps", "4", *PROMPTS, "--no-progress"]
    lora = ["--lora", str(run / "lora")] + (["--fuse"] if fuse else [])
    assert main(["sample", *common, "--out", str(tmp_path / "base")]) == 0
    assert main(["sample", *common, *lora, "--out", str(tmp_path / "today")]) == 0
    for scale in ("0", "1", "0.5"):
        assert main(["sample", *common, *lora, "--lora-scale", scale, "--out", str(tmp_path / scale)]) == 0
    assert _max_diff(tmp_path / "0", tmp_path / "base") == 0
    assert _max_diff(tmp_path / "1", tmp_path / "today") == 0
    assert _max_diff(tmp_path / "today", tmp_path / "base") > 0
    assert 0 < _max_diff(tmp_path / "0.5", tmp_path / "base") and 0 < _max_diff(tmp_path / "0.5", tmp_path / "today")


@pytest.mark.parametrize("args,needle", [
    (["--lora-scale", "0.5"], "--lora-scale needs --lora"),
    (["--lora", "RUN", "--lora-scale", "nan"], "--lora-scale must be a finite number"),
])
def test_lora_scale_bad_input(run, tiny_dir, tmp_path, capsys, args, needle):
    args = [str(run / "lora") if a == "RUN" else a for a in args]
    assert main(["sample", "--model", str(tiny_dir), *PROMPTS, *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err and not (tmp_path / "x").exists()


def test_sample_model_help_names_the_built_in_models(capsys):
    with pytest.raises(SystemExit) as done:
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0
    start = text.index("--model MODEL diffusers")
    model_help = text[start:text.index("--lora LORA", start)]
    assert "`world`" in model_help and "`world-flow`" in model_help and "`tiny`" in model_help


def test_help_config_shows_the_configs_values_beside_the_defaults(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  path: tiny\ndata:\n  prompts: [a red circle]\nlora:\n  rank: 8\n")
    assert main(["train", str(cfg), "train.lr=0.002", "--help-config"]) == 0
    # (a key's line; its meaning follows on indented lines, wrapped to the terminal)
    rows = {ln[2:].split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:] if ln[2:3].strip()}
    assert rows["lora.rank"].startswith("*") and rows["lora.rank"].split()[2:4] == ["4", "8"]
    assert rows["train.lr"].startswith("*") and rows["train.lr"].split()[3] == "0.002"
    assert rows["sampler.steps"].startswith(" ") and rows["sampler.steps"].split()[1:3] == ["20", "20"]
    assert main(["train", "--help-config"]) == 0  # no config: the defaults alone, as before
    assert capsys.readouterr().out.splitlines()[0].split()[:2] == ["method", "'fnf'"]


def test_resume_from_a_given_checkpoint_continues_its_trajectory(run, tiny_dir, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / ".lock").unlink(missing_ok=True)
    extra = {"train.steps": 3, "train.checkpoint_every": 1, "train.keep_checkpoints": 3, "train.lr": 0.05,
             "sampler.guidance_scale": 3.0, "sampler.negative_prompt": "blurry"}
    ckpt = copy / "checkpoints" / "step-000001"
    assert main(["train", "--no-progress", "--resume", str(ckpt), *base_overrides(tiny_dir, copy, **extra)]) == 0
    assert "removing the newer checkpoints step-000002, step-000003" in capsys.readouterr().err
    assert [json.loads(x)["step"] for x in (copy / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    before, after = (load_file(d / "checkpoints" / "step-000003" / "lora.safetensors") for d in (run, copy))
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)  # the same trajectory, bitwise
    # --resume alone, with overrides after it, still means the newest checkpoint
    extra["train.steps"] = 4
    assert main(["train", "--no-progress", "--resume", *base_overrides(tiny_dir, copy, **extra)]) == 0
    assert json.loads((copy / "summary.json").read_text())["steps"] == 4


@pytest.mark.parametrize("which", ["missing", "other-run", "incomplete"])
def test_resume_bad_checkpoint_is_one_line_exit_2(run, tiny_dir, tmp_path, capsys, which):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / ".lock").unlink(missing_ok=True)
    ckpt = {"missing": copy / "checkpoints" / "step-000009", "other-run": run / "checkpoints" / "step-000001",
            "incomplete": copy / "checkpoints" / "step-000002"}[which]
    if which == "incomplete":
        (ckpt / "manifest.json").unlink()
    listing = sorted(str(p) + str(p.stat().st_mtime_ns) for p in copy.rglob("*"))
    args = base_overrides(tiny_dir, copy, **{"train.steps": 3, "train.checkpoint_every": 1,
                                             "train.keep_checkpoints": 3})
    assert main(["train", "--no-progress", "--resume", str(ckpt), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("focusnfix: error: --resume") and len(err) < 300
    assert sorted(str(p) + str(p.stat().st_mtime_ns) for p in copy.rglob("*")) == listing  # nothing changed


def test_metrics_write_null_for_non_finite_and_old_nan_files_still_read(tmp_path):
    from focusnfix.runs.metrics_log import MetricsLog, read_metrics, truncate_metrics
    from focusnfix.report import render_report

    log = MetricsLog(tmp_path)
    log.write({"step": 1, "loss": 0.5, "grad_norm": 1.0, "skipped": 0.0})
    log.write({"step": 2, "loss": float("nan"), "grad_norm": float("inf"), "skipped": 1.0,
               "config_changed": {"train.lr": [0.01, float("nan")]}})
    log.close()
    rows = [_strict(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert (rows[1]["loss"] is None and rows[1]["grad_norm"] is None
            and rows[1]["config_changed"]["train.lr"] == [0.01, None])
    # a file written by an older version, with bare NaN: read (as None), rewritten as strict JSON, rendered
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n'
                                            '{"step": 2, "loss": NaN, "grad_norm": Infinity}\n')
    assert read_metrics(tmp_path / "metrics.jsonl")[1] == {"step": 2, "loss": None, "grad_norm": None}
    truncate_metrics(tmp_path / "metrics.jsonl", 2)
    assert [_strict(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0.5, None]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": NaN}\n'
                                            '{"step": 3, "loss": 0.4}\n')
    assert render_report(tmp_path).is_file()


class NaNOnce:
    """A reward that is NaN on one call only: that step is skipped, the run finishes."""

    name, differentiable = "nan-once", True

    def __init__(self, call):
        self.calls, self.call = 0, call

    def __call__(self, images, prompts):
        from focusnfix.rewards import RewardOutput

        self.calls += 1
        score = -images.mean((1, 2, 3))
        return RewardOutput(score=score * float("nan") if self.calls == self.call else score)


def test_a_skipped_step_is_strict_json_in_metrics_and_summary(tiny_dir, tmp_path):
    from focusnfix.config import load_config
    from focusnfix.training.trainer import train

    out = tmp_path / "run"
    cfg = load_config(None, base_overrides(tiny_dir, out, **{"method": "draft", "train.steps": 3,
                                                             "train.max_bad_steps": 2}))
    train(cfg, reward=NaNOnce(call=2), progress=False)
    rows = [_strict(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in rows if r["skipped"] == 1.0]
    assert (len(skipped) == 1 and skipped[0]["loss"] is None
            and all(math.isfinite(r["loss"]) for r in rows if not r["skipped"]))
    _strict((out / "summary.json").read_text())
