"""Issue 14: crashes and full disks never leave a run stuck or a partial file visible.

* SIGKILL at 12 points (the ``FOCUSNFIX_FAULT`` hooks of :mod:`focusnfix.runs.checkpoint`), among them the
  first checkpoint, the first metrics line and a torn metrics line; each run then resumes (or, before
  the first checkpoint, simply starts again) and ends **bitwise** equal to an uninterrupted run: its
  final LoRA, checkpoint and every metrics row but the timing. Bitwise, not within a tolerance: a
  resumed run executes the same float operations on the same inputs as the uninterrupted one (every
  random draw is derived from (train.seed, step); one OpenMP thread, same process image: the killed
  runs are forked from this test process), so any difference is a bug, not rounding.
* A full file system (a 20 MB tmpfs filled up, when the tests run as root and may mount; else a
  simulated ENOSPC raised by the write call itself: see each test's ``if real`` branch) for train,
  eval and report: status 1,
  one line naming the file, the last good state intact, no partial file visible; after freeing space
  the rerun completes with the same result as an uninterrupted run.
"""
from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import base_overrides
from fs_util import fill, tmpfs
from safetensors.torch import load_file

from focusnfix.runs.checkpoint import latest_checkpoint
from focusnfix.cli import main

EXTRA = {"train.steps": 5, "train.checkpoint_every": 1, "train.keep_checkpoints": 2, "sampler.k_max": 3}


def forked(argv: list[str], env: dict[str, str]) -> int:
    """Run ``main(argv)`` in a forked child with extra environment; its exit status, or -signal.

    A fork shares this process's imported modules, so a killed run costs only its training steps."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 99
        try:
            os.environ.update(env)
            code = main(argv)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def train_argv(tiny_dir, out: Path, **extra) -> list[str]:
    return ["train", "--no-progress", *base_overrides(tiny_dir, out, **{**EXTRA, **extra})]


def rows(run: Path) -> list[dict]:
    """metrics.jsonl, every line parsed (a torn line fails here), without the timing."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def assert_same_run(run: Path, ref: Path) -> None:
    """Final checkpoint, exported LoRA and metrics bitwise equal to the uninterrupted run; nothing partial left."""
    for rel in ("checkpoints/step-000005/lora.safetensors", "checkpoints/step-000005/optimizer.safetensors",
                "lora/pytorch_lora_weights.safetensors"):
        a, b = tensors(run / rel), tensors(ref / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    assert rows(run) == rows(ref) and [r["step"] for r in rows(run)] == [1, 2, 3, 4, 5]
    assert json.loads((run / "summary.json").read_text())["steps"] == 5
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000005"]
    assert not [p for p in run.rglob("*") if p.name.startswith((".tmp", ".old")) or p.name.endswith(".tmp")]
    assert not (run / ".lock").exists()


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main(train_argv(tiny_dir, run)) == 0
    return run


# point -> the step of the newest complete checkpoint after the kill (None: none yet, the run starts again)
POINTS = {
    "config-write@0": None,  # config.yaml written, no step yet
    "after-step@1": None,  # before the first metrics line and the first checkpoint
    "metrics-torn@1": None,  # half of the first metrics line on disk
    "checkpoint-middle@1": None,  # the first checkpoint half written
    "checkpoint-complete@1": None,  # the first checkpoint written, not yet renamed into place
    "checkpoint-saved@2": 2,  # renamed, older ones not pruned yet
    "checkpoint-middle@3": 2,
    "prune-middle@3": 3,  # step 1's manifest deleted, its folder not yet
    "metrics-torn@4": 3,
    "after-step@4": 3,
    "lora-middle@5": 5,  # final checkpoint saved, lora/ half written
    "before-summary@5": 5,  # lora/ complete, summary.json not written
}
RESTART_WITHOUT_RESUME = {"after-step@1", "metrics-torn@1", "checkpoint-complete@1"}  # item 3: a plain start works too


@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_then_resume_equals_uninterrupted(point, tiny_dir, tmp_path, reference, capsys):
    run = tmp_path / "run"
    assert forked(train_argv(tiny_dir, run), {"FOCUSNFIX_FAULT": point}) == -signal.SIGKILL
    ckpt = latest_checkpoint(run / "checkpoints", quiet=True)
    assert (ckpt and int(ckpt.name[5:])) == POINTS[point] or (ckpt is None and POINTS[point] is None)
    assert (run / ".lock").is_file()  # the killed run's lock file stays behind: only its OS lock was released
    if point.startswith("metrics-torn"):
        last = (run / "metrics.jsonl").read_bytes().splitlines()[-1]
        with pytest.raises(ValueError):
            json.loads(last)  # the torn tail the resume must tolerate
    resume = [] if point in RESTART_WITHOUT_RESUME else ["--resume"]
    capsys.readouterr()
    assert main([*train_argv(tiny_dir, run), *resume]) == 0
    err = capsys.readouterr().err
    if POINTS[point] is None and resume:
        assert "no complete checkpoint; starting from step 0" in err  # said so, then started cleanly
    assert_same_run(run, reference)


# -- a full disk ---------------------------------------------------------------------------------------
@pytest.fixture
def disk(tmp_path):
    """(folder, real): a 20 MB tmpfs when possible (real = True), else a plain folder (ENOSPC simulated)."""
    with tmpfs(tmp_path / "mnt", "20m") as mount:
        yield (mount, True) if mount is not None else (tmp_path / "mnt", False)


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("focusnfix: error: ") and len(lines[0]) < 300, lines
    assert "Traceback" not in err
    return lines[0]


def _no_partial_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]


def test_train_disk_full_keeps_last_checkpoint_then_resumes(tiny_dir, disk, reference, monkeypatch, capsys):
    folder, real = disk
    run = folder / "run"
    assert main(train_argv(tiny_dir, run, **{"train.steps": 2})) == 0
    before = {p: p.read_bytes() for p in (run / "checkpoints" / "step-000002").iterdir()}
    if real:
        filler = fill(folder, leave=40 * 1024)  # room for config.yaml and a metrics line, not for a checkpoint (~90 kB)
    else:  # simulated: the optimizer file of the next checkpoint hits a full disk
        import focusnfix.runs.checkpoint as ck

        real_save = ck.save_file

        def full(tensors, path, *a, **kw):
            if Path(path).name == "optimizer.safetensors":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save(tensors, path, *a, **kw)
        monkeypatch.setattr(ck, "save_file", full)
    capsys.readouterr()
    assert main([*train_argv(tiny_dir, run), "--resume"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "step-000002' (step 2) is intact" in line, line
    assert latest_checkpoint(run / "checkpoints", quiet=True).name == "step-000002"
    assert {p: p.read_bytes() for p in (run / "checkpoints" / "step-000002").iterdir()} == before
    _no_partial_files(run)
    rows(run)  # every line whole
    if real:
        filler.unlink()
    else:
        monkeypatch.undo()
    assert main([*train_argv(tiny_dir, run), "--resume"]) == 0
    assert_same_run(run, reference)


def test_eval_disk_full_leaves_no_visible_output_then_resumes(tiny_dir, disk, reference, monkeypatch, capsys, tmp_path):
    folder, real = disk
    argv = ["eval", "--config", str(reference), "--methods", "base", f"fnf={reference}", "--seeds", "1", "2",
            "--batch-size", "1", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0  # uninterrupted, on a normal disk
    out = folder / "eval"
    if real:
        filler = fill(folder, leave=12 * 1024)  # a few 32 px images and masks, not all of them
    else:
        import PIL.Image

        real_save, calls = PIL.Image.Image.save, []

        def full(self, *a, **kw):
            calls.append(1)
            if len(calls) > 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save(self, *a, **kw)
        monkeypatch.setattr(PIL.Image.Image, "save", full)
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 1
    assert "No space left on device" in _one_line(capsys.readouterr().err)
    assert not out.exists()  # only the hidden, resumable .partial-eval
    _no_partial_files(folder)
    if real:
        filler.unlink()
    else:
        monkeypatch.undo()
    assert main([*argv, "--out", str(out)]) == 0
    strip = lambda d: [{k: v for k, v in json.loads(x).items() if k != "seconds"}  # noqa: E731
                       for x in (d / "samples.jsonl").read_text().splitlines()]
    assert strip(out) == strip(tmp_path / "ref") and len(strip(out)) == 2 * 2 * 2


def test_report_disk_full_keeps_the_old_report(disk, reference, monkeypatch, capsys):
    import shutil

    folder, real = disk
    run = folder / "run"
    shutil.copytree(reference, run)
    assert main(["report", str(run)]) == 0
    old = (run / "report.html").read_bytes()
    (run / "report.html").write_bytes(old[:100])  # a report that differs from what a new one would be
    old = (run / "report.html").read_bytes()
    if real:
        filler = fill(folder, leave=0)
    else:
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", full)
    capsys.readouterr()
    assert main(["report", str(run)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "report.html" in line, line
    assert (run / "report.html").read_bytes() == old
    _no_partial_files(run)
    if real:
        filler.unlink()
