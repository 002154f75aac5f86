"""Issue 14: locked run and eval folders, honest divergence, changed keys on resume, a frozen DDP rank,
reward plug-ins limited to rewards."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
import torch
from conftest import base_overrides
from safetensors.torch import load_file
from test_distributed import free_port

from focusnfix.runs.checkpoint import latest_checkpoint
from focusnfix.cli import main
from focusnfix.config import load_config
from focusnfix.errors import FocusNFixError, TrainingDiverged
from focusnfix.rewards.registry import reward_factory
from focusnfix.training.trainer import Trainer, lr_lambda


def stopped_child(argv: list[str], fault: str) -> int:
    """Fork ``main(argv)`` that freezes itself (SIGSTOP) at ``fault``; return its pid once it is stopped."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.environ.update({"FOCUSNFIX_FAULT": fault, "FOCUSNFIX_FAULT_SIGNAL": "STOP"})
            code = main(argv)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, os.WUNTRACED)  # returns when the child stops (or ends)
    assert os.WIFSTOPPED(status), status
    return pid


def resume_child(pid: int) -> int:
    os.kill(pid, signal.SIGCONT)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


def one_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("focusnfix: error: ") and len(lines[0]) < 300, lines
    return lines[0]


# -- item 5: locks -------------------------------------------------------------------------------------
def test_two_trainers_on_one_folder(tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--no-progress", *base_overrides(tiny_dir, run, **{"train.steps": 3, "train.checkpoint_every": 1})]
    pid = stopped_child(argv, "after-step@2")  # the first trainer, frozen mid-run, holding the folder's lock
    try:
        capsys.readouterr()
        for extra in ([], ["--resume"]):
            assert main([*argv, *extra]) == 2
            assert f"run folder '{run}' is in use by process {pid}" in one_line(capsys)
    finally:
        code = resume_child(pid)
    assert code == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # one run, not two mixed
    assert not (run / ".lock").exists()


def test_two_evals_on_one_out(tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--no-progress", *base_overrides(tiny_dir, run)]) == 0
    out = tmp_path / "eval"
    argv = ["eval", "--config", str(run), "--methods", "base", f"fnf={run}", "--seeds", "1", "2", "--batch-size", "1",
            "--no-progress", "--device", "cpu", "--out", str(out)]
    pid = stopped_child(argv, "eval-batch@1")  # the first eval, frozen after its first image
    try:
        capsys.readouterr()
        for extra in ([], ["--overwrite"]):
            assert main([*argv, *extra]) == 2
            assert f"eval folder '{out}' is in use by process {pid}" in one_line(capsys)
    finally:
        code = resume_child(pid)
    assert code == 0
    results = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len([json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]) == 2 * 2 * 2
    capsys.readouterr()
    assert main(argv) == 2  # a later eval does not delete the earlier one's results
    assert "exists and is not empty" in one_line(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == results


# -- item 7: divergence --------------------------------------------------------------------------------
def test_divergence_never_saves_nonfinite_weights(tiny_dir, tmp_path):
    """An update that overflows the LoRA (here train.lr = inf, which the config refuses but the Python
    API can still set after validation) stops the run at once; no checkpoint or lora/ holds the NaN
    weights and the message names the checkpoint that stays."""
    run = tmp_path / "run"
    Trainer(load_config(None, base_overrides(tiny_dir, run, **{"train.checkpoint_every": 1}))).train(progress=False)
    lora_before = (run / "lora" / "pytorch_lora_weights.safetensors").read_bytes()
    cfg = load_config(None, base_overrides(tiny_dir, run, **{"train.checkpoint_every": 1, "train.steps": 4}))
    cfg.train.lr = float("inf")
    with pytest.raises(TrainingDiverged) as info:
        Trainer(cfg).train(resume=True, progress=False)
    message = str(info.value)
    assert "became NaN/Inf in step 3" in message and "step-000002' (step 2) is intact" in message, message
    assert latest_checkpoint(run / "checkpoints").name == "step-000002"
    assert not (run / "checkpoints" / "step-000003").exists()
    assert (run / "lora" / "pytorch_lora_weights.safetensors").read_bytes() == lora_before
    for ckpt in (run / "checkpoints").iterdir():
        assert all(torch.isfinite(t).all() for t in load_file(ckpt / "lora.safetensors").values())


def test_divergence_before_any_checkpoint_says_none_exists(tiny_dir, tmp_path):
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run"))
    cfg.train.lr = float("inf")
    with pytest.raises(TrainingDiverged, match="no checkpoint was saved yet"):
        Trainer(cfg).train(progress=False)
    assert not (tmp_path / "run" / "lora").exists() and latest_checkpoint(tmp_path / "run" / "checkpoints") is None


def test_checkpoint_writer_refuses_nonfinite_tensors(tmp_path):
    from focusnfix.runs.checkpoint import save_checkpoint

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(TrainingDiverged, match="holds NaN or Inf"):
        save_checkpoint(tmp_path / "step-000001", 1, {"w": torch.tensor([1.0, float("nan")])},
                        ({}, {"param_groups": [], "scalars": {}}), sched)
    assert not list(tmp_path.iterdir())


# -- item 8: changed keys on resume --------------------------------------------------------------------
def test_resume_applies_a_changed_lr_and_length_and_records_them(tiny_dir, tmp_path):
    run = tmp_path / "run"
    common = {"train.lr_schedule": "linear", "train.checkpoint_every": 1}
    assert main(["train", "--no-progress", *base_overrides(tiny_dir, run, **common, **{"train.lr": 0.01})]) == 0
    assert main(["train", "--no-progress", "--resume",
                 *base_overrides(tiny_dir, run, **common, **{"train.lr": 0.001, "train.steps": 4})]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["config_changed"] == {"train.steps": [2, 4], "train.lr": [0.01, 0.001]}
    assert all("config_changed" not in r for r in rows[:2] + rows[3:])
    # the logged LR is the schedule's after each step: the new base LR over the new length (4 steps)
    fn = lr_lambda("linear", 0, 4)
    assert (rows[2]["lr"] == pytest.approx(0.001 * fn(3), rel=1e-12)
            and rows[3]["lr"] == pytest.approx(0.001 * fn(4), abs=1e-15))
    assert load_config(run / "config.yaml").train.lr == 0.001


def test_resume_keys_that_may_change_do_not_include_the_trajectory():
    from focusnfix.runs.resume import RESUMABLE

    assert "train.lr" in RESUMABLE and "train.steps" in RESUMABLE
    for key in ("sampler.steps", "sampler.k", "lora.rank", "train.seed", "train.batch_size", "objective.lam",
                "reward.name", "method"):
        assert key not in RESUMABLE


# -- item 11: plug-ins ---------------------------------------------------------------------------------
def _color(**kwargs):
    from focusnfix.rewards import ColorReward

    return ColorReward()


unmarked_factory = _color  # a plain function: refused
marked_factory = reward_factory(lambda **kwargs: _color())  # marked as a reward factory: accepted


def test_reward_plugins_are_reward_classes_or_marked_factories():
    from focusnfix.rewards.registry import build_reward

    assert type(build_reward("test_run_safety:marked_factory")).__name__ == "ColorReward"
    assert type(build_reward("focusnfix.rewards.color:ColorReward")).__name__ == "ColorReward"  # a class needs no mark
    for name, text in (("test_run_safety:unmarked_factory", "is not a reward class"), ("os:system", "standard-library"),
                       ("subprocess:run", "standard-library"), ("builtins:exec", "standard-library"),
                       ("torch:load", "is not a reward class")):
        with pytest.raises(FocusNFixError, match=text):  # refused before it is called with these arguments
            build_reward(name, **{"command": "echo pwned"})


# -- item 10: a frozen DDP rank ------------------------------------------------------------------------
def test_frozen_rank_fails_the_job_after_the_collective_timeout(tiny_dir, tmp_path):
    """Two gloo processes; rank 1 freezes (SIGSTOP) after step 1. Rank 0 waits in its next collective
    for train.collective_timeout = 5 s, then fails with one line (status 1) naming the timeout; torchrun
    then ends the job (SIGTERM, and SIGKILL after its 30 s grace period). Once torchrun has sent its
    SIGTERM to the frozen rank (it logs that rank's pid), the test sends that pid SIGCONT so that it
    receives the SIGTERM at once (time saved only; the job ends either way)."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "FOCUSNFIX_FAULT": "after-step@1",
           "FOCUSNFIX_FAULT_SIGNAL": "STOP", "FOCUSNFIX_FAULT_RANK": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "focusnfix",
           "train", "--no-progress", *base_overrides(tiny_dir, run, **{"train.cpu": True, "train.steps": 3,
                                                                      "train.collective_timeout": 5})]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: list[str] = []
    failed = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("focusnfix: error:"):
                failed.set()
            frozen = re.search(r"Sending process (\d+) closing signal SIGTERM", line)
            if frozen and failed.is_set():
                os.kill(int(frozen.group(1)), signal.SIGCONT)  # a worker of the torchrun started above
        failed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        failed.wait(timeout=400)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    errors = [ln for ln in lines if ln.startswith("focusnfix: error:")]
    assert proc.returncode != 0
    assert len(errors) == 1 and len(errors[0]) < 300, lines[-40:]
    assert ("timed out after train.collective_timeout=5 s" in errors[0]
            and "no checkpoint was saved yet" in errors[0]), errors
    assert not (run / ".lock").exists()  # rank 0 failed cleanly and released the run folder
