"""`sample` / `eval` device, dtype and batch flags; batch-size invariance; eval resume; LoRA files with
any name; SLD parameters. All on CPU (GPU paths: tests/test_cuda.py)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import base_overrides
from PIL import Image

import focusnfix.sampling
from focusnfix.backbones import load_backbone
from focusnfix.cli import main
from focusnfix.devices import resolve_device
from focusnfix.errors import FocusNFixError
from focusnfix.evaluation.specs import build_guidance, parse_method
from focusnfix.methods.sld import PRESETS, SLDConfig
from focusnfix.sampling import generate

PROMPTS, SEEDS = ["a red circle", "a blue square", "a green triangle"], [3, 4, 5]


def run_cli(capsys, argv):
    rc = main(argv)
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def lora_run(tiny_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("lora-run") / "run"
    assert main(["train", "--no-progress", *base_overrides(tiny_dir, run)]) == 0
    return run


@pytest.mark.parametrize("argv, expected", [
    (["--device", "tpu"], "is not a device"),
    (["--device", "cuda:x"], "is not a device"),
    (["--dtype", "float64"], "--dtype 'float64' is not supported"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--height", "0"], "--height must be >= 1"),
    (["--width", "-8"], "--width must be >= 1"),
])
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_bad_device_dtype_batch_flags(tiny_dir, tmp_path, capsys, command, argv, expected):
    out = tmp_path / "out"
    if command == "sample":
        base = ["sample", "--model", str(tiny_dir), "--prompt", "x"]
    else:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"model:\n  path: {tiny_dir}\ndata:\n  prompts: [a red circle]\n")
        base = ["eval", "--config", str(cfg), "--no-progress"]
    rc, lines = run_cli(capsys, [*base, "--out", str(out), *argv])
    assert rc == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not out.exists() and not list(tmp_path.glob(".partial-*"))


def test_device_names_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        with pytest.raises(FocusNFixError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(FocusNFixError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_sample_flags_reach_the_images(tiny_dir, tmp_path):
    args = ["sample", "--model", str(tiny_dir), "--prompt", "a red circle", "--seeds", "1", "--steps", "2",
            "--no-progress"]
    assert main([*args, "--device", "cpu", "--dtype", "bfloat16", "--height", "48", "--width", "32",
                 "--out", str(tmp_path / "a")]) == 0
    img = np.asarray(Image.open(tmp_path / "a" / "00000-seed1.png"))
    assert img.shape == (48, 32, 3)
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "b")]) == 0
    assert np.asarray(Image.open(tmp_path / "b" / "00000-seed1.png")).shape == (32, 32, 3)


def test_batch_size_does_not_change_the_images(tiny_dir, tmp_path):
    """Noise is drawn per seed on the CPU, so a batch is the same jobs run side by side: x_T equal
    exactly; the images equal up to float rounding of batched matmuls (CPU kernels block by batch)."""
    backbone = load_backbone(str(tiny_dir), device="cpu")
    noise = backbone.initial_noise(SEEDS)
    assert torch.equal(noise, torch.cat([backbone.initial_noise([s]) for s in SEEDS]))
    batched = generate(backbone, PROMPTS, SEEDS, steps=4, guidance_scale=5.0)
    single = torch.cat([generate(backbone, [p], [s], steps=4, guidance_scale=5.0) for p, s in zip(PROMPTS, SEEDS)])
    # the same float32 ops rounded in another order, a few ulps each through 4 UNet calls and the decoder:
    # up to ~1e3 eps = 1e-4 on [0, 1] images (measured <= 2.3e-6 over AVX-512, AVX2 and default kernels);
    # a seed or prompt paired with the wrong row moves pixels by > 1e-2
    assert (batched - single).abs().max().item() <= 1e-4
    args = ["sample", "--model", str(tiny_dir), *sum((["--prompt", p] for p in PROMPTS), []), "--seeds", "3", "4",
            "--steps", "4", "--no-progress", "--device", "cpu"]
    assert main([*args, "--batch-size", "1", "--out", str(tmp_path / "b1")]) == 0
    assert main([*args, "--batch-size", "4", "--out", str(tmp_path / "b4")]) == 0
    index = json.loads((tmp_path / "b1" / "index.json").read_text())
    assert index == json.loads((tmp_path / "b4" / "index.json").read_text()) and len(index) == 6
    for entry in index:
        a, b = (np.asarray(Image.open(tmp_path / d / entry["file"]), dtype=np.int16) for d in ("b1", "b4"))
        assert np.abs(a - b).max() <= 1  # 8-bit rounding of a <= 1e-4 difference


class Recorder:
    """Wraps focusnfix.sampling.generate: records (method kind, n images) per call; raises after
    ``fail_after`` calls."""

    def __init__(self, real, fail_after=None):
        self.real, self.fail_after, self.calls = real, fail_after, []

    def __call__(self, backbone, prompts, seeds, *args, **kwargs):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C
        guidance = args[3] if len(args) > 3 else kwargs.get("guidance")
        lora = any(n.endswith("lora_A") for n, _ in backbone.unet.named_modules())
        kind = type(guidance).__name__ if guidance is not None else ("lora" if lora else "base")
        self.calls.append((kind, len(prompts)))
        return self.real(backbone, prompts, seeds, *args, **kwargs)


def test_eval_resumes_an_interrupted_run(tiny_dir, lora_run, tmp_path, monkeypatch, capsys):
    real = focusnfix.sampling.generate
    argv = ["eval", "--config", str(lora_run), "--methods", "base", f"fnf={lora_run}", "rg-region:scale=100",
            "--seeds", "1", "2", "3", "--batch-size", "2", "--no-progress", "--device", "cpu",
            "--set", "sampler.steps=3"]
    # 2 prompts x 3 seeds = 6 jobs in 3 batches per method
    out = tmp_path / "eval"
    first = Recorder(real, fail_after=4)  # base: 3 batches, fnf: 1 batch, then "Ctrl-C"
    monkeypatch.setattr(focusnfix.sampling, "generate", first)
    assert main([*argv, "--out", str(out)]) == 130
    partial = tmp_path / ".partial-eval"
    assert not out.exists() and partial.is_dir()
    assert len(list((partial / "images" / "base").glob("*.png"))) == 6
    base_files = {p.name: p.read_bytes() for p in (partial / "images" / "base").glob("*.png")}
    stamps = {p.name: p.stat().st_mtime_ns for p in (partial / "images" / "base").glob("*.png")}

    second = Recorder(real)
    monkeypatch.setattr(focusnfix.sampling, "generate", second)
    assert main([*argv, "--out", str(out)]) == 0
    assert "8 images already done" in capsys.readouterr().out  # base 6 + fnf 2
    assert [k for k, _ in second.calls] == ["lora", "lora", "RewardGuidance", "RewardGuidance", "RewardGuidance"]
    assert sum(n for _, n in second.calls) == 4 + 6  # only the unfinished images
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images" / "base").glob("*.png")} == stamps  # not rewritten
    assert {p.name: p.read_bytes() for p in (out / "images" / "base").glob("*.png")} == base_files
    assert not partial.exists() and not (out / ".work").exists()

    monkeypatch.setattr(focusnfix.sampling, "generate", real)
    ref = tmp_path / "ref"
    assert main([*argv, "--out", str(ref)]) == 0  # uninterrupted
    strip = lambda d: [{k: v for k, v in json.loads(x).items() if k != "seconds"}  # noqa: E731
                       for x in (d / "samples.jsonl").read_text().splitlines()]
    assert strip(out) == strip(ref) and len(strip(ref)) == 18
    for sub in ("images", "masks", "heatmaps"):
        files = sorted(p.relative_to(ref) for p in (ref / sub).rglob("*.png"))
        assert files and files == sorted(p.relative_to(out) for p in (out / sub).rglob("*.png"))
        assert all((out / f).read_bytes() == (ref / f).read_bytes() for f in files)


def test_eval_resume_with_other_settings_starts_afresh_and_lock(tiny_dir, lora_run, tmp_path, monkeypatch, capsys):
    real = focusnfix.sampling.generate
    argv = ["eval", "--config", str(lora_run), "--methods", "base", "--seeds", "1", "2", "--batch-size", "2",
            "--no-progress", "--device", "cpu", "--out", str(tmp_path / "eval")]
    monkeypatch.setattr(focusnfix.sampling, "generate", Recorder(real, fail_after=0))
    assert main([*argv, "--set", "sampler.steps=3"]) == 130
    assert not (tmp_path / ".partial-eval").exists()  # nothing finished: nothing left behind
    monkeypatch.setattr(focusnfix.sampling, "generate", Recorder(real, fail_after=1))
    assert main([*argv, "--set", "sampler.steps=3"]) == 130
    from focusnfix.runs.locking import FolderLock

    capsys.readouterr()
    # another eval's lock (an OS lock: a second open file conflicts)
    with FolderLock(tmp_path / ".eval.lock", "eval folder"):
        rc, lines = run_cli(capsys, [*argv, "--set", "sampler.steps=3"])
    assert rc == 2 and len(lines) == 1 and f"in use by process {os.getpid()}" in lines[0], lines
    again = Recorder(real)
    monkeypatch.setattr(focusnfix.sampling, "generate", again)
    assert main([*argv, "--set", "sampler.steps=2"]) == 0  # other sampler settings: nothing reused
    assert "starting afresh" in capsys.readouterr().out
    assert sum(n for _, n in again.calls) == 4

    # issue 26 #9: a torn .work/state.json (a crash while an older version wrote it) used to fail every rerun with
    # status 1 until the folder was deleted by hand; now it is unknown settings: the eval starts afresh
    monkeypatch.setattr(focusnfix.sampling, "generate", Recorder(real, fail_after=1))
    assert main([*argv, "--out", str(tmp_path / "torn"), "--set", "sampler.steps=2"]) == 130
    state = tmp_path / ".partial-torn" / ".work" / "state.json"
    state.write_text(state.read_text()[:40])
    torn = Recorder(real)
    monkeypatch.setattr(focusnfix.sampling, "generate", torn)
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "torn"), "--set", "sampler.steps=2"]) == 0
    assert "unreadable settings; starting afresh" in capsys.readouterr().out
    assert sum(n for _, n in torn.calls) == 4 and not (tmp_path / ".partial-torn").exists()


def test_lora_file_with_any_name(tiny_dir, lora_run, tmp_path, capsys):
    other = tmp_path / "downloaded"
    other.mkdir()
    shutil.copy(lora_run / "lora" / "pytorch_lora_weights.safetensors", other / "my_style.safetensors")
    args = ["sample", "--model", str(tiny_dir), "--prompt", "a red circle", "--seeds", "4", "5", "--steps", "3",
            "--no-progress"]
    for name, lora in (("run", lora_run / "lora"), ("folder", other), ("file", other / "my_style.safetensors")):
        assert main([*args, "--lora", str(lora), "--out", str(tmp_path / name)]) == 0
    for f in ("00000-seed4.png", "00001-seed5.png"):
        ref = (tmp_path / "run" / f).read_bytes()
        assert (tmp_path / "folder" / f).read_bytes() == ref and (tmp_path / "file" / f).read_bytes() == ref
    assert main([*args, "--out", str(tmp_path / "base")]) == 0
    assert (tmp_path / "base" / "00000-seed4.png").read_bytes() != (tmp_path / "run" / "00000-seed4.png").read_bytes()
    spec = parse_method(f"x={other / 'my_style.safetensors'}")
    assert spec.kind == "lora" and spec.name == "x" and parse_method(str(other)).name == "downloaded"
    shutil.copy(other / "my_style.safetensors", other / "second.safetensors")
    rc, lines = run_cli(capsys, [*args, "--lora", str(other), "--out", str(tmp_path / "o")])
    assert rc == 2 and len(lines) == 1 and "several .safetensors files" in lines[0]
    (tmp_path / "w.bin").write_bytes(b"x")
    rc, lines = run_cli(capsys, [*args, "--lora", str(tmp_path / "w.bin"), "--out", str(tmp_path / "o")])
    assert rc == 2 and len(lines) == 1 and "not a .safetensors file" in lines[0]
    assert not (tmp_path / "o").exists()


def test_sld_parameters_parse_and_reach_the_guidance(tiny_dir, tmp_path, capsys):
    custom = parse_method("sld:scale=500,warmup=3,threshold=0.02,momentum=0.2,beta=0.5")
    assert custom.name == "sld-custom-scale500-warmup3-threshold0.02-momentum0.2-beta0.5"
    expected = SLDConfig(warmup_steps=3, guidance_scale=500.0, threshold=0.02, momentum_scale=0.2, mom_beta=0.5)
    strong = parse_method("sld:strong,scale=100,concept=blood, gore")
    assert strong.name == "sld-strong-scale100" and strong.params["concept"] == "blood, gore"
    assert strong.params["warmup_steps"] == PRESETS["strong"].warmup_steps and strong.params["guidance_scale"] == 100.0
    named = parse_method("mine=sld:max,beta=0.1")
    assert (named.name == "mine" and named.params["mom_beta"] == 0.1
            and named.params["threshold"] == PRESETS["max"].threshold)
    assert parse_method("sld").name == "sld-medium" and parse_method("sld:weak").params["preset"] == "weak"

    backbone = load_backbone(str(tiny_dir))
    guidance = build_guidance(custom, backbone, None, PROMPTS[:2], None, 4)
    assert guidance.cfg == expected
    assert build_guidance(strong, backbone, None, PROMPTS[:2], None, 4).cfg == PRESETS["strong"].__class__(
        **{**PRESETS["strong"].__dict__, "guidance_scale": 100.0})
    off = build_guidance(parse_method("sld:max,scale=1"), backbone, None, PROMPTS[:2], None, 4)  # s_S <= 1: SLD off
    on = build_guidance(parse_method("sld:max"), backbone, None, PROMPTS[:2], None, 4)
    base = generate(backbone, PROMPTS[:2], SEEDS[:2], steps=4, guidance_scale=5.0)
    assert torch.equal(generate(backbone, PROMPTS[:2], SEEDS[:2], steps=4, guidance_scale=5.0, guidance=off), base)
    assert not torch.equal(generate(backbone, PROMPTS[:2], SEEDS[:2], steps=4, guidance_scale=5.0, guidance=on), base)

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  path: {tiny_dir}\ndata:\n  prompts: [a red circle]\n")
    for bad, msg in (("sld:strength=3", "valid options: scale, warmup, threshold, momentum, beta"),
                     ("sld:warmup=1.5", "warmup must be an integer"),
                     ("sld:medium,beta=2", "beta (momentum decay) must be in [0, 1]"),
                     ("sld:extreme,scale=3", "unknown SLD preset")):
        rc, lines = run_cli(capsys, ["eval", "--config", str(cfg), "--methods", "base", bad,
                                     "--out", str(tmp_path / "o")])
        assert rc == 2 and len(lines) == 1 and msg in lines[0], (bad, lines)


def test_eval_height_width_flags_reach_every_method(lora_run, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--config", str(lora_run), "--methods", "base", "rg-region:scale=30", "--seeds", "1",
                 "--height", "48", "--width", "32", "--set", "sampler.steps=2", "--device", "cpu", "--no-progress",
                 "--out", str(out)]) == 0
    runtime = json.loads((out / "eval.json").read_text())["runtime"]
    assert (runtime["height"], runtime["width"], runtime["device"], runtime["dtype"]) == (48, 32, "cpu", "float32")
    for sub in ("images/base", "images/rg-region", "masks", "heatmaps"):
        shapes = {np.asarray(Image.open(p)).shape for p in (out / sub).glob("*.png")}
        assert shapes == {(48, 32, 3)}, sub
