"""Issue 14: bad input across every subcommand, as a table.

Each case asserts: the exit status (2 = bad input, 1 = runtime failure), exactly one stderr line that
starts with ``focusnfix: error:``, is under 300 characters and holds the expected text, no traceback,
and every file under the shared folder byte-identical afterwards (nothing created, changed or
deleted: the failed command left no trace). Cases run in-process through ``focusnfix.cli.main``;
two run as real subprocesses at the end (the module entry point, with the libraries' import-time
output, which must not add lines).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import base_overrides
from fs_util import readonly_copy
from safetensors.torch import load_file, save_file

from focusnfix.cli import main
from focusnfix.runs.locking import FolderLock
from focusnfix.rewards import RewardOutput


# -- reward plug-ins that break the contract (imported by path, as a user's package would be) ----------
class WrongShape:
    """score of shape (1, B) instead of (B,)."""
    name, differentiable = "wrong-shape", True

    def __call__(self, images, prompts):
        return RewardOutput(score=-images.mean((1, 2, 3)).unsqueeze(0))


class NotAnOutput:
    """returns a bare tensor instead of a RewardOutput."""
    name, differentiable = "bare-tensor", True

    def __call__(self, images, prompts):
        return -images.mean((1, 2, 3))


class SmallHeatmap:
    """a heatmap at 8 x 8 px instead of the image size."""
    name, differentiable = "small-heatmap", True

    def __call__(self, images, prompts):
        return RewardOutput(score=-images.mean((1, 2, 3)), heatmap=images[:, :1, :8, :8])


# -- the shared folder ---------------------------------------------------------------------------------
@dataclass
class Env:
    root: Path  # everything here must be byte-identical after every case
    tiny: Path
    run: Path  # a finished 2-step run (checkpoints, lora/, config.yaml)
    nan_lora: Path
    huge_prompts: Path  # 30 MB, one line
    wide_csv: Path  # one field beyond csv's 128 KiB field limit
    deep_yaml: Path
    bomb_yaml: Path
    bomb_prompts_yaml: Path
    big_yaml: Path
    a_file: Path
    broken_eval: Path
    report_src: Path

    def train(self, out: Path | str, **extra) -> list[str]:
        return ["train", "--no-progress", *base_overrides(self.tiny, out, **extra)]

    def sample(self, *extra: str, out: Path | None = None) -> list[str]:
        return ["sample", "--model", str(self.tiny), "--prompt", "a red circle", "--steps", "2", "--no-progress",
                "--device", "cpu", "--out", str(out or self.root / "samples"), *extra]

    def eval(self, *extra: str, out: Path | None = None) -> list[str]:
        return ["eval", "--config", str(self.run), "--no-progress", "--device", "cpu", "--seeds", "1",
                "--out", str(out or self.root / "evals" / "e"), *extra]


@pytest.fixture(scope="module")
def env(tiny_dir, tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("bad-input")
    run = root / "run"
    assert main(["train", "--no-progress", *base_overrides(tiny_dir, run, **{"train.checkpoint_every": 1})]) == 0
    lora = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    first = sorted(lora)[0]
    lora[first] = torch.full_like(lora[first], float("nan"))  # what a diverged run would have saved
    (root / "nan").mkdir()
    save_file(lora, root / "nan" / "diverged.safetensors")
    huge = root / "huge.txt"
    huge.write_bytes(b"a" * (30 * 2**20) + b"\n")
    wide = root / "wide.csv"
    wide.write_text("prompt\n" + "b" * 200_000 + "\n")
    deep = root / "deep.yaml"
    deep.write_text("reward:\n  args: " + "[" * 5000 + "]" * 5000 + "\n")
    bomb = root / "bomb.yaml"  # the YAML "billion laughs": 9 levels of 9 aliases each (9**9 leaves when expanded)
    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb.write_text("reward:\n  args:\n" + "".join(f"    {line}\n" for line in levels))
    bomb_prompts = root / "bomb-prompts.yaml"  # the same bomb as a prompt list
    bomb_prompts.write_text("data:\n  sample_prompts:\n"
                            + "".join(f"    - {line.split(': ', 1)[1]}\n" for line in levels))
    big = root / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(17 * 2**20)  # sparse
    a_file = root / "a-file"
    a_file.write_text("not a folder")
    broken = root / "broken-eval"
    broken.mkdir()
    (broken / "eval.json").write_text("{}")
    (broken / "samples.jsonl").write_text('{"i": 0}\n{broken\n{"i": 1}\n')
    (root / "existing-eval").mkdir()
    (root / "existing-eval" / "keep.txt").write_text("an earlier eval")
    src = root / "report-src"
    src.mkdir()
    (src / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    return Env(root, Path(tiny_dir), run, root / "nan" / "diverged.safetensors", huge, wide, deep, bomb, bomb_prompts,
               big, a_file, broken, src)


def snapshot(root: Path) -> dict[str, object]:
    """Every file's bytes (a hash); files over 4 MB (inputs only ever read) by size and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = ((st.st_size, st.st_mtime_ns) if st.st_size > 4 * 2**20
                                             else hashlib.sha256(p.read_bytes()).hexdigest())
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with FolderLock(path, "test"):
        yield
    if not any(path.parent.iterdir()):
        path.parent.rmdir()


def _hold(path_fn):
    """A case helper: hold an OS lock on a path (as another process would) while the command runs."""
    return lambda e: _locked(path_fn(e))


def _made(*paths: str):
    """A case helper: these paths under the shared folder exist before the command (a trailing / makes a folder, else
    a file with a little JSON); they stay, so the snapshot before and after holds them."""
    def make(e):
        for rel in paths:
            path = e.root / rel
            if rel.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
            elif not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}")
        return contextlib.nullcontext()
    return make


LONG = "x" * 300  # one path component longer than NAME_MAX (255)
NOTHING = lambda e: contextlib.nullcontext()  # noqa: E731

# id: (status, expected text, argv(env), context(env))
CASES: dict[str, tuple] = {
    # -- the command line itself -------------------------------------------------------------------
    "unknown subcommand": (2, "invalid choice: 'bogus'", lambda e: ["bogus"], NOTHING),
    "unknown flag": (2, "unrecognized arguments: --bogus", lambda e: [*e.train(e.root / "r"), "--bogus"], NOTHING),
    "sample without --model": (2, "sample needs --model PATH",
                               lambda e: ["sample", "--out", str(e.root / "o")], NOTHING),
    "eval --limit not a number": (2, "invalid int value: 'abc'", lambda e: e.eval("--limit", "abc"), NOTHING),
    "train nothing to train": (2, "train needs a CONFIG", lambda e: ["train"], NOTHING),
    # -- train: config values (issue 14, item 1) ---------------------------------------------------
    "train.log_every=0": (2, "train.log_every must be in [1,",
                          lambda e: e.train(e.root / "r", **{"train.log_every": 0}), NOTHING),
    "train.adam_beta1=2": (2, "train.adam_beta1 must be in [0, 1)",
                           lambda e: e.train(e.root / "r", **{"train.adam_beta1": 2}), NOTHING),
    "lora.dropout=1.5": (2, "lora.dropout must be in [0, 1)",
                         lambda e: e.train(e.root / "r", **{"lora.dropout": 1.5}), NOTHING),
    "data.seed_pool=-5": (2, "data.seed_pool must be in [1,",
                          lambda e: e.train(e.root / "r", **{"data.seed_pool": -5}), NOTHING),
    "model.resolution=-16": (2, "model.resolution must be in [1, 16384] px",
                             lambda e: e.train(e.root / "r", **{"model.resolution": -16}), NOTHING),
    "train.batch_size=10**12": (2, "train.batch_size must be in [1, 4096]",
                                lambda e: e.train(e.root / "r", **{"train.batch_size": 10**12}), NOTHING),
    "train.steps=2**70": (2, "train.steps must be an integer below 2**63",
                          lambda e: e.train(e.root / "r", **{"train.steps": 2**70}), NOTHING),
    "train.lr=inf (item 7)": (2, "train.lr must be a finite number",
                              lambda e: e.train(e.root / "r", **{"train.lr": "inf"}), NOTHING),
    "train.lr=.nan": (2, "train.lr must be a finite number",
                      lambda e: e.train(e.root / "r", **{"train.lr": ".nan"}), NOTHING),
    "guidance_scale=.nan (item 9)": (2, "sampler.guidance_scale must be a finite number",
                                     lambda e: e.train(e.root / "r", **{"sampler.guidance_scale": ".nan"}), NOTHING),
    "objective.lam=.inf": (2, "objective.lam must be a finite number",
                           lambda e: e.train(e.root / "r", **{"objective.lam": ".inf"}), NOTHING),
    "objective.eps=-1e-3": (2, "objective.eps must be in [0, 1]",
                            lambda e: e.train(e.root / "r", **{"objective.eps": -1e-3}), NOTHING),
    "train.seed=-1": (2, "train.seed must be in [0, 2**32 - 1]",
                      lambda e: e.train(e.root / "r", **{"train.seed": -1}), NOTHING),
    "sampler.steps=100000": (2, "sampler.steps must be in [1, 1000]",
                             lambda e: e.train(e.root / "r", **{"sampler.steps": 100000}), NOTHING),
    "grpo.clip_range=0": (2, "grpo",
                          lambda e: e.train(e.root / "r", **{"method": "grpo", "grpo.clip_range": 0}), NOTHING),
    "train.collective_timeout=0": (2, "train.collective_timeout must be in (0,",
                                   lambda e: e.train(e.root / "r", **{"train.collective_timeout": 0}), NOTHING),
    "train.max_grad_norm=-1": (2, "train.max_grad_norm must be in [0,",
                               lambda e: e.train(e.root / "r", **{"train.max_grad_norm": -1}), NOTHING),
    "train.keep_checkpoints=0": (2, "train.keep_checkpoints must be in [1, 1000000]",
                                 lambda e: e.train(e.root / "r", **{"train.keep_checkpoints": 0}), NOTHING),
    "data.sample_seeds=[-3]": (2, "data.sample_seeds must be in [0,",
                               lambda e: e.train(e.root / "r", **{"data.sample_seeds": "[-3]"}), NOTHING),
    "reward.args holds inf": (2, "reward.args holds a non-finite number",
                              lambda e: e.train(e.root / "r", **{"reward.args": "{x: .inf}"}), NOTHING),
    "model.path with NUL": (2, "model.path holds a NUL character",
                            lambda e: e.train(e.root / "r", **{"model.path": "a\x00b"}), NOTHING),
    "5000-deep YAML": (2, "nested too deeply",
                       lambda e: ["train", str(e.deep_yaml), *base_overrides(e.tiny, e.root / "r")], NOTHING),
    "YAML alias bomb in reward.args": (2, "reward.args is too large or too deeply nested",
                                       lambda e: ["train", str(e.bomb_yaml), *base_overrides(e.tiny, e.root / "r")],
                                       NOTHING),
    "YAML aliases in a prompt list": (2, "data.sample_prompts must be str, got [",
                                      lambda e: ["train", str(e.bomb_prompts_yaml),
                                                 *base_overrides(e.tiny, e.root / "r")], NOTHING),
    "17 MB config file": (2, "is larger than 16 MB", lambda e: ["train", str(e.big_yaml)], NOTHING),
    "override without =": (2, "must look like key=value",
                           lambda e: ["train", str(e.run / "config.yaml"), "oops"], NOTHING),
    # -- train: paths, prompts, plug-ins -----------------------------------------------------------
    "output_dir component too long": (2, "File name too long", lambda e: e.train(e.root / LONG / "run"), NOTHING),
    "output_dir 5000 characters": (2, "File name too long",
                                   lambda e: e.train(e.root / "/".join(["y" * 200] * 25)), NOTHING),
    "output_dir under a file": (2, "is a file", lambda e: e.train(e.a_file / "run"), NOTHING),
    "reward os:system (item 11)": (2, "standard-library module",
                                   lambda e: e.train(e.root / "r", **{"reward.name": "os:system"}), NOTHING),
    "reward that is not a reward": (2, "is not a reward class",
                                    lambda e: e.train(e.root / "r", **{"reward.name": "focusnfix.config:load_config"}),
                                    NOTHING),
    "classifier model os:getcwd": (2, "standard-library module", lambda e: e.train(e.root / "r", **{
        "reward.name": "classifier", "reward.args": "{model: 'os:getcwd'}"}), NOTHING),
    "reward score shape": (2, "reward 'wrong-shape' (test_bad_input_table.WrongShape) breaks the reward contract",
                           lambda e: e.train(e.root / "r", **{"method": "draft",
                                                              "reward.name": "test_bad_input_table:WrongShape"}),
                           NOTHING),
    "reward returns a tensor": (2, "must return RewardOutput, got Tensor",
                                lambda e: e.train(e.root / "r", **{"method": "draft",
                                                                   "reward.name": "test_bad_input_table:NotAnOutput"}),
                                NOTHING),
    "reward heatmap shape": (2, "reward heatmap must have shape (1, 1, 32, 32), got (1, 1, 8, 8)",
                             lambda e: e.train(e.root / "r", **{"reward.name": "test_bad_input_table:SmallHeatmap"}),
                             NOTHING),
    "train 30 MB one-line prompt file": (2, "is 31457280 characters long", lambda e: e.train(e.root / "r", **{
        "data.prompts": "[]", "data.prompt_file": str(e.huge_prompts)}), NOTHING),
    "train CSV field beyond the limit": (2, "is not a valid CSV table", lambda e: e.train(e.root / "r", **{
        "data.prompts": "[]", "data.prompt_file": str(e.wide_csv)}), NOTHING),
    "train on an evaluation-only set": (2, "safety evaluation only",
                                        lambda e: e.train(e.root / "r", **{"data.prompt_set": "i2p:sexual"}), NOTHING),
    # -- train: the run folder (items 3, 5, 8) -----------------------------------------------------
    "plain start on a finished run": (2, "already holds a run",
                                      lambda e: e.train(e.run, **{"train.checkpoint_every": 1}), NOTHING),
    "resume with sampler.steps changed": (2, "--resume with sampler.steps changed (4 -> 5)",
                                          lambda e: [*e.train(e.run, **{"train.checkpoint_every": 1,
                                                                        "sampler.steps": 5}), "--resume"], NOTHING),
    "resume with train.steps below the checkpoint": (2, "train.steps=1 is below the checkpoint's step 2",
                                                     lambda e: [*e.train(e.run, **{"train.checkpoint_every": 1,
                                                                                   "train.steps": 1}), "--resume"],
                                                     NOTHING),
    "train where the run folder's .lock is a folder": (2, "'.lock' is a folder, not a lock file",
                                                        lambda e: e.train(e.root / "lock-is-dir"),
                                                        _made("lock-is-dir/.lock/")),
    "train.reference_cache under a file": (2, "train.reference_cache", lambda e: e.train(e.root / "r", **{
        "train.reference_cache": str(e.a_file / "cache"), "data.seed_pool": 4}), NOTHING),
    "train on a locked run folder": (2, f"is in use by process {os.getpid()}",
                                     lambda e: [*e.train(e.run, **{"train.checkpoint_every": 1, "train.steps": 3}),
                                                "--resume"],
                                     _hold(lambda e: e.run / ".lock")),
    # -- sample ------------------------------------------------------------------------------------
    "sample --guidance-scale nan (item 9)": (2, "--guidance-scale must be a finite number",
                                             lambda e: e.sample("--guidance-scale", "nan"), NOTHING),
    "sample --steps 5000": (2, "--steps must be >= 1 (and <= 1000)", lambda e: e.sample("--steps", "5000"), NOTHING),
    "sample --seeds -1": (2, "--seeds must be integers in [0, 2**63)", lambda e: e.sample("--seeds", "-1"), NOTHING),
    "sample --seeds 2**64": (2, "--seeds must be integers in [0, 2**63)",
                             lambda e: e.sample("--seeds", str(2**64)), NOTHING),
    "sample 30 MB prompt file (item 9)": (2, "is 31457280 characters long (max 4000)",
                                          lambda e: e.sample("--prompts", str(e.huge_prompts)), NOTHING),
    "sample LoRA with NaN weights (item 7)": (2, "holds NaN/Inf weights",
                                              lambda e: e.sample("--lora", str(e.nan_lora)), NOTHING),
    "sample --out is a file": (2, "is a file; choose a folder", lambda e: e.sample(out=e.a_file), NOTHING),
    "sample --out under a file": (2, "is under the file", lambda e: e.sample(out=e.a_file / "x"), NOTHING),
    "sample --out path too long": (2, "File name too long", lambda e: e.sample(out=e.root / LONG), NOTHING),
    "sample without prompts": (2, "sample needs prompts",
                               lambda e: ["sample", "--model", str(e.tiny), "--out", str(e.root / "o")], NOTHING),
    "sample --height 100000": (2, "--height must be <= 16384 px", lambda e: e.sample("--height", "100000"), NOTHING),
    "sample --batch-size 0": (2, "--batch-size must be >= 1", lambda e: e.sample("--batch-size", "0"), NOTHING),
    "sample missing model": (2, "does not exist",
                             lambda e: ["sample", "--model", str(e.root / "nomodel"), "--prompt", "x",
                                        "--out", str(e.root / "o")], NOTHING),
    "sample --device cuda:7": (2, "--device cuda:7", lambda e: e.sample("--device", "cuda:7"), NOTHING),
    "sample --resolution 0": (2, "--resolution must be in [1, 16384]",
                              lambda e: e.sample("--resolution", "0"), NOTHING),
    # -- eval --------------------------------------------------------------------------------------
    "eval --limit -1 (item 9)": (2, "--limit must be >= 1", lambda e: e.eval("--limit", "-1"), NOTHING),
    "eval --limit 0": (2, "--limit must be >= 1", lambda e: e.eval("--limit", "0"), NOTHING),
    "eval method name ../../x/pwn (item 6)": (2, "method name '../../x/pwn'",
                                              lambda e: e.eval("--methods", f"../../x/pwn={e.run}"), NOTHING),
    "eval method name ..": (2, "method name '..'", lambda e: e.eval("--methods", "..=rg:scale=2"), NOTHING),
    "eval rg:scale=nan": (2, "scale must be a finite number", lambda e: e.eval("--methods", "rg:scale=nan"), NOTHING),
    "eval missing run": (2, "does not exist", lambda e: e.eval("--methods", f"x={e.root / 'norun'}"), NOTHING),
    "eval LoRA with NaN weights": (2, "holds NaN/Inf weights",
                                   lambda e: e.eval("--methods", f"bad={e.nan_lora}"), NOTHING),
    "eval duplicate names": (2, "method names must be unique",
                             lambda e: e.eval("--methods", "a=rg", "a=rg:scale=2"), NOTHING),
    "eval --out exists": (2, "exists and is not empty", lambda e: e.eval(out=e.root / "existing-eval"), NOTHING),
    "eval --out locked (item 5)": (2, f"is in use by process {os.getpid()}", lambda e: e.eval(),
                                   _hold(lambda e: e.root / "evals" / ".e.lock")),
    "eval missing config": (2, "not found",
                            lambda e: ["eval", "--config", str(e.root / "nocfg.yaml"), "--out", str(e.root / "o")],
                            NOTHING),
    "eval 30 MB prompt file": (2, "characters long (max 4000)",
                               lambda e: e.eval("--prompts", str(e.huge_prompts)), NOTHING),
    "eval --seeds -5": (2, "--seeds must be integers in [0, 2**63)", lambda e: e.eval("--seeds", "-5"), NOTHING),
    "eval --set train.lr=inf": (2, "train.lr must be a finite number",
                                lambda e: e.eval("--set", "train.lr=inf"), NOTHING),
    "eval --out under a file": (2, "is under the file", lambda e: e.eval(out=e.a_file / "e"), NOTHING),
    # -- report ------------------------------------------------------------------------------------
    "report missing folder": (2, "does not exist", lambda e: ["report", str(e.root / "nothing")], NOTHING),
    "report neither kind": (2, "is neither an eval folder", lambda e: ["report", str(e.root / "nan")], NOTHING),
    "report broken samples.jsonl": (2, "samples.jsonl:2: not valid JSON",
                                    lambda e: ["report", str(e.broken_eval)], NOTHING),
    # -- world -------------------------------------------------------------------------------------
    "world install from a missing folder (item 9)": (2, "does not exist",
                                                     lambda e: ["world", "install", "--out", str(e.root / "noworld"),
                                                                "--dest", str(e.root / "dest")], NOTHING),
    "world install from a non-training folder": (2, "holds no trained pipeline",
                                                 lambda e: ["world", "install", "--out", str(e.root / "nan"),
                                                            "--dest", str(e.root / "dest")], NOTHING),
    "world gates without weights": (2, "no pipeline in",
                                    lambda e: ["world", "gates", "--weights", str(e.root / "noweights")], NOTHING),
    "world train --only transformer": (2, "is a stage of --arch flow",
                                       lambda e: ["world", "train", "--only", "transformer",
                                                  "--out", str(e.root / "w")], NOTHING),
    "world train --threads -1": (2, "--threads must be in [0,",
                                 lambda e: ["world", "train", "--threads", "-1", "--out", str(e.root / "w")], NOTHING),
    "world gates --guidance nan": (2, "--guidance must be a finite number",
                                   lambda e: ["world", "gates", "--guidance", "nan"], NOTHING),
    "world train --base missing": (2, "--base", lambda e: ["world", "train", "--arch", "flow", "--tiny", "--base",
                                                           str(e.root / "nobase"), "--out", str(e.root / "w")],
                                   NOTHING),
    "world train --base without --arch flow": (2, "--base is for --arch flow",
                                               lambda e: ["world", "train", "--tiny", "--base", str(e.root / "nan"),
                                                          "--out", str(e.root / "w")], NOTHING),
    "world train --only unet without the earlier stages": (2, "needs the vae stage's",
                                                           lambda e: ["world", "train", "--tiny", "--only", "unet",
                                                                      "--out", str(e.root / "w")], NOTHING),
    "world install from an incomplete training folder": (2, "pipeline/unet",
                                                         lambda e: ["world", "install", "--out",
                                                                    str(e.root / "half-world"), "--dest",
                                                                    str(e.root / "dest")],
                                                         _made("half-world/pipeline/model_index.json")),
}


def run_case(capsys, argv: list[str]) -> tuple[int, list[str], str]:
    capsys.readouterr()
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, [ln for ln in captured.err.splitlines() if ln.strip()], captured.err


def check(rc, lines, err, status, expected):
    assert rc == status, (rc, err[-2000:])
    assert "Traceback" not in err
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("focusnfix: error: ") and len(line) < 300, line
    assert expected in line, line


def test_the_table_covers_every_subcommand(env):
    commands = [argv(env)[0] for _, _, argv, _ in CASES.values()]
    assert len(commands) >= 60
    assert all(commands.count(c) >= 3 for c in ("train", "sample", "eval", "report", "world")), commands


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, env, capsys):
    status, expected, argv, context = CASES[case]
    args = argv(env)
    with context(env):  # (a lock held "by another process" is part of the folder before and after)
        before = snapshot(env.root)
        rc, lines, err = run_case(capsys, args)
        after = snapshot(env.root)
    check(rc, lines, err, status, expected)
    assert after == before


# -- read-only folders (a tmpfs remounted read-only as root; mode 0o555 otherwise) ---------------------
@pytest.fixture(scope="module")
def readonly(env, tmp_path_factory):
    with readonly_copy(env.report_src, tmp_path_factory.mktemp("ro") / "mnt") as folder:
        if folder is None:
            pytest.skip("no read-only folder here: running as root where mounting a tmpfs is not allowed")
        yield folder


@pytest.mark.parametrize("command", ["train", "sample", "eval", "report"])
def test_read_only_folder(command, env, readonly, capsys):
    argv = {"train": env.train(readonly / "run"), "sample": env.sample(out=readonly / "out"),
            "eval": env.eval(out=readonly / "eval"), "report": ["report", str(readonly)]}[command]
    # train, sample and eval check their output folder before any work; report finds out when it writes
    written = "Read-only file system (EROFS)" if os.geteuid() == 0 else "Permission denied (EACCES)"
    before = snapshot(readonly)
    rc, lines, err = run_case(capsys, argv)
    check(rc, lines, err, 2, written if command == "report" else "cannot write to")
    assert snapshot(readonly) == before


# -- real processes: the console entry point, with the libraries' import-time output -----------------
@pytest.mark.parametrize("argv, expected", [
    (lambda e: [*e.train(e.root / "r", **{"train.adam_beta1": 2})], "train.adam_beta1 must be in [0, 1)"),
    (lambda e: e.sample("--prompts", str(e.huge_prompts)), "characters long (max 4000)"),
])
def test_bad_input_subprocess(argv, expected, env):
    before = snapshot(env.root)
    proc = subprocess.run([sys.executable, "-m", "focusnfix", *argv(env)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    check(proc.returncode, lines, proc.stderr, 2, expected)
    assert snapshot(env.root) == before
