"""Bad input: one-line error, exit status 2, no traceback, no damaged run folder."""
import pytest
from conftest import base_overrides

from focusnfix.cli import main


def run_cli(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return rc, lines




@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  steps: 2\n")
    return path


CASES = {
    "unknown config key": ({"train.bogus": 1}, "unknown config key 'train.bogus'"),
    "unknown section": ({"trainer.steps": 1}, "valid keys in the top level"),
    "wrong type": ({"train.steps": "many"}, "train.steps must be int"),
    "missing model path": ({"model.path": "/nonexistent/model"}, "does not exist"),
    "hub id while offline": ({"model.path": "someorg/some-model"}, "hub is offline"),
    "empty prompt list": ({"data.prompts": "[]"}, "data.prompts"),
    "K > T": ({"sampler.k": 9}, "1 <= K <= T"),
    "negative lambda": ({"objective.lam": -1}, "objective.lam must be in [0, 1e+12], got -1"),
    "unknown reward": ({"reward.name": "nosuchreward"}, "unknown reward 'nosuchreward'"),
    "reward import path fails": ({"reward.name": "nosuchpkg.mod:Thing"}, "cannot import module 'nosuchpkg.mod'"),
    "rank <= 0": ({"lora.rank": 0}, "lora.rank must be in [1, 4096], got 0"),
    "fp16 with FSDP": ({"train.fsdp": True, "train.mixed_precision": "fp16"}, "fp16 is not supported with train.fsdp"),
    "unknown method": ({"method": "magic"}, "method must be fnf, draft, grpo or fnf-grpo"),
    "bad reward args": ({"reward.args": "{nope: 1}"}, "rejected its arguments"),
    "resolution not divisible": ({"model.resolution": 30}, "not divisible by 4 (this model's VAE factor"),
    "bad lora target": ({"lora.targets": "[nonexistent_proj]"}, "match no module of the denoiser"),
    "k_max < k": ({"sampler.k": 2, "sampler.k_max": 1}, "k_max"),
    "grpo.timesteps > T": ({"method": "grpo", "grpo.timesteps": 5},
                           "grpo.timesteps must be at most sampler.steps (4), got 5"),
    # 4096 x 4096 samples in one rollout ran for minutes before: refused by the config check, before any allocation
    "rollout of 4096 x 4096": ({"method": "fnf-grpo", "train.batch_size": 4096, "grpo.group_size": 4096},
                               "lower train.batch_size or grpo.group_size"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_values(case, tiny_dir, tmp_path, cfg_file, capsys):
    overrides, expected = CASES[case]
    out = tmp_path / "run"
    args = base_overrides(tiny_dir, out, **overrides)
    rc, lines = run_cli(capsys, ["train", str(cfg_file), *args, "--no-progress"])
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("focusnfix: error:"), lines
    assert expected in lines[0]
    assert not out.exists()  # nothing written


def test_grpo_rollout_bound():
    """train.batch_size x grpo.group_size: at most 4096 samples in one rollout (1 x 4096, 64 x 64 and 2048 x 2 pass,
    4097 and 8192 do not); fnf (no rollout groups) ignores grpo.group_size."""
    from focusnfix.config import load_config
    from focusnfix.errors import ConfigError

    def cfg(method, batch, group):
        values = {"model.path": "tiny", "data.prompts": "[x]", "method": method, "train.batch_size": batch,
                  "grpo.group_size": group}
        return load_config(None, [f"{k}={v}" for k, v in values.items()])

    for batch, group in ((1, 4096), (64, 64), (2048, 2)):
        cfg("grpo", batch, group)
    for batch, group in ((17, 241), (4096, 2)):  # 4097, 8192
        with pytest.raises(ConfigError, match=f"= {batch * group} samples per rollout"):
            cfg("grpo", batch, group)
    cfg("fnf", 4096, 4096)


def test_lora_targets_match_by_suffix_as_peft(tiny_dir):
    """lora.targets names modules as peft does: a target matches a module whose qualified name equals it or ends
    with "." + it, so the three-part names of diffusers' own LoRA scripts (attn1.to_out.0, ff.net.0.proj) work and
    select exactly the modules peft adapts; a dotted name that ends no module's name is still refused."""
    from focusnfix.backbones import load_backbone
    from focusnfix.backbones.lora import add_lora
    from focusnfix.errors import FocusNFixError

    targets = ["attn1.to_out.0", "ff.net.0.proj", "attn2.to_k"]
    unet = load_backbone(str(tiny_dir)).unet
    names = [n for n, _ in unet.named_modules()]
    expected = {n for n in names if any(n == t or n.endswith("." + t) for t in targets)}
    assert {n.rsplit(".", 1)[-1] for n in expected} == {"0", "proj", "to_k"}  # every target matched something
    add_lora(unet, 2, targets=targets)
    adapted = {n for n, m in unet.named_modules() if hasattr(m, "lora_A")}
    assert adapted == expected
    with pytest.raises(FocusNFixError, match=r"lora.targets \['attn3.to_out.0', 'net.9.proj'\] match no module"):
        add_lora(load_backbone(str(tiny_dir)).unet, 2, targets=["to_q", "attn3.to_out.0", "net.9.proj"])


def test_malformed_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [steps: 2\n  lr: :\n")
    rc, lines = run_cli(capsys, ["train", str(bad)])
    assert rc == 2 and len(lines) == 1 and "not valid YAML" in lines[0]


def test_missing_config_file(tmp_path, capsys):
    rc, lines = run_cli(capsys, ["train", str(tmp_path / "nope.yaml")])
    assert rc == 2 and len(lines) == 1 and "not found" in lines[0]


def test_prompt_files(tiny_dir, tmp_path, cfg_file, capsys):
    empty, latin = tmp_path / "empty.txt", tmp_path / "latin1.txt"
    empty.write_text("\n# only a comment\n")
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    bad_seed = tmp_path / "bad_seed.csv"
    bad_seed.write_text("prompt,seed\na red circle,7\na blue square,seven\n")
    for path, expected in ((empty, "holds no prompts"), (latin, "not UTF-8"), (tmp_path / "missing.txt", "not found"),
                           (bad_seed, "line 3: seed 'seven' is not an integer")):
        out = tmp_path / f"run-{path.stem}"
        args = base_overrides(tiny_dir, out, **{"data.prompts": "[]", "data.prompt_file": str(path)})
        rc, lines = run_cli(capsys, ["train", str(cfg_file), *args])
        assert rc == 2 and len(lines) == 1 and expected in lines[0], lines
        assert not out.exists()


def test_existing_run_is_not_overwritten(tiny_dir, tmp_path, cfg_file, capsys):
    out = tmp_path / "run"
    assert main(["train", str(cfg_file), *base_overrides(tiny_dir, out), "--no-progress"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc, lines = run_cli(capsys, ["train", str(cfg_file), *base_overrides(tiny_dir, out), "--no-progress"])
    assert rc == 2 and "already holds a run" in lines[-1]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_without_checkpoint_starts_from_step_zero(tiny_dir, tmp_path, cfg_file, capsys):
    """Issue 14 (3): --resume where no complete checkpoint exists starts from step 0 and says so."""
    rc, lines = run_cli(capsys, ["train", str(cfg_file), *base_overrides(tiny_dir, tmp_path / "run"), "--resume",
                                 "--no-progress"])
    assert rc == 0 and len(lines) == 1 and "no complete checkpoint; starting from step 0" in lines[0], lines
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_sample_bad_lora_and_debug_traceback(tiny_dir, tmp_path, capsys):
    rc, lines = run_cli(capsys, ["sample", "--model", str(tiny_dir), "--lora", str(tmp_path), "--prompt", "x",
                                 "--out", str(tmp_path / "o")])
    assert rc == 2 and len(lines) == 1 and "pytorch_lora_weights.safetensors" in lines[0]
    rc = main(["--debug", "sample", "--model", "/nonexistent", "--prompt", "x", "--out", str(tmp_path / "o")])
    assert rc == 2 and "Traceback" in capsys.readouterr().err


def test_pickled_weights_are_refused(tiny_dir, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(tiny_dir, model)
    for f in model.rglob("*.safetensors"):
        torch.save(load_file(f), f.with_name(f.name.replace(".safetensors", ".bin").replace("model", "pytorch_model")))
        f.unlink()
    rc, lines = run_cli(capsys, ["sample", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "o")])
    assert rc == 2 and "could not load model" in lines[-1]
    assert not (tmp_path / "o").exists()


def test_huge_prompt_file_and_huge_prompt(tiny_dir, tmp_path, cfg_file, capsys):
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(60 * 2**20)  # sparse 60 MB file
    long = tmp_path / "long.txt"
    long.write_text("a" * 5000 + "\n")
    for path, expected in ((huge, "larger than"), (long, "characters long")):
        out = tmp_path / f"run-{path.stem}"
        args = base_overrides(tiny_dir, out, **{"data.prompts": "[]", "data.prompt_file": str(path)})
        rc, lines = run_cli(capsys, ["train", str(cfg_file), *args])
        assert rc == 2 and len(lines) == 1 and expected in lines[0], lines
        assert not out.exists()


def test_lora_from_another_architecture(tiny_dir, tiny_xl_dir, tmp_path, cfg_file, capsys):
    run = tmp_path / "run"
    assert main(["train", str(cfg_file), *base_overrides(tiny_dir, run), "--no-progress"]) == 0
    out = tmp_path / "samples"
    rc, lines = run_cli(capsys, ["sample", "--model", str(tiny_xl_dir), "--lora", str(run / "lora"), "--prompt", "x",
                                 "--out", str(out)])
    assert rc == 2 and "cannot be loaded into this model" in lines[-1] and "size mismatch" in lines[-1]
    assert not out.exists()


def test_truncated_lora_file(tiny_dir, tmp_path, cfg_file, capsys):
    run = tmp_path / "run"
    assert main(["train", str(cfg_file), *base_overrides(tiny_dir, run), "--no-progress"]) == 0
    weights = run / "lora" / "pytorch_lora_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rc, lines = run_cli(capsys, ["sample", "--model", str(tiny_dir), "--lora", str(run / "lora"), "--prompt", "x",
                                 "--out", str(tmp_path / "o")])
    assert rc == 2 and len(lines) == 1 and "cannot be loaded" in lines[0]


def test_resume_with_incompatible_lora_config(tiny_dir, tmp_path, cfg_file, capsys):
    run = tmp_path / "run"
    assert main(["train", str(cfg_file), *base_overrides(tiny_dir, run), "--no-progress"]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc, lines = run_cli(capsys, ["train", str(cfg_file), *base_overrides(tiny_dir, run, **{"lora.rank": 3}),
                                 "--resume"])
    assert rc == 2 and len(lines) == 1 and "lora.rank changed (2 -> 3)" in lines[0], lines  # refused before loading
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    (run / "config.yaml").unlink()  # without the run's config the LoRA's shapes still refuse it
    rc, lines = run_cli(capsys, ["train", str(cfg_file), *base_overrides(tiny_dir, run, **{"lora.rank": 3}),
                                 "--resume"])
    assert rc == 2 and "LoRA" in lines[-1] and "shape" in lines[-1]


def test_unusable_output_folder(tiny_dir, tmp_path, cfg_file, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out, expected in ((blocker, "is a file"), (blocker / "run", "is a file")):
        rc, lines = run_cli(capsys, ["train", str(cfg_file), *base_overrides(tiny_dir, out)])
        assert rc == 2 and len(lines) == 1 and expected in lines[0], lines
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("argv, expected", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--resolution", "30"], "not divisible by 4 (this model's VAE factor"),
])
def test_sample_bad_arguments(tiny_dir, tmp_path, capsys, argv, expected):
    out = tmp_path / "o"
    rc, lines = run_cli(capsys, ["sample", "--model", str(tiny_dir), "--prompt", "x", "--out", str(out), *argv])
    assert rc == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not out.exists()
