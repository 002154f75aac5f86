"""Reward plug-ins (issue 27): a plug-in module next to the config or in the working directory imports without
PYTHONPATH, ``path/to/file.py:Class`` names a file, a failing import says how to fix it in one line, and a ``sum``
reward logs each of its terms (``reward/<term>`` in metrics.jsonl) beside the total."""
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import base_overrides

from focusnfix.cli import main
from focusnfix.config import load_config
from focusnfix.errors import MAX_MESSAGE
from focusnfix.rewards.registry import build_reward
from focusnfix.training.trainer import Trainer

PLUGIN = '''
from focusnfix.rewards.color import ColorReward


class {cls}(ColorReward):
    """Penalises {colour} pixels."""

    def __init__(self):
        super().__init__(color={rgb}, name="{name}")
'''


def _write_plugin(path, cls, colour, rgb, name):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PLUGIN.format(cls=cls, colour=colour, rgb=rgb, name=name))


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_plugins_next_to_the_config_and_in_the_working_directory_need_no_pythonpath(tiny_dir, tmp_path):
    """The console script's sys.path holds neither folder (python -I: no script or working directory on it); a
    `sum` of the two plug-ins logs each term, and the total is their weighted sum."""
    _write_plugin(tmp_path / "configs" / "beside_config_rewards.py", "Red", "red", [1.0, 0.0, 0.0], "red")
    _write_plugin(tmp_path / "work" / "in_cwd_rewards.py", "Blue", "blue", [0.0, 0.0, 1.0], "blue")
    config = tmp_path / "configs" / "plugins.yaml"
    config.write_text("reward:\n  name: sum\n  args:\n    terms:\n"
                      "      - {name: 'beside_config_rewards:Red', weight: 2.0}\n"
                      "      - {name: 'in_cwd_rewards:Blue', weight: 0.5}\n")
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-I", "-m", "focusnfix", "train", str(config),
           *base_overrides(tiny_dir, run, **{"method": "draft", "train.steps": 2}), "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path / "work", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _rows(run)
    assert len(rows) == 2
    for row in rows:
        assert math.isclose(row["reward"], 2.0 * row["reward/red"] + 0.5 * row["reward/blue"], rel_tol=1e-5)
        assert row["reward/red"] < 0 and row["reward/blue"] < 0  # ColorReward: -mean closeness to the colour


def test_a_plugin_file_path_names_the_file(tmp_path, monkeypatch):
    _write_plugin(tmp_path / "plugins" / "by_path_rewards.py", "Green", "green", [0.0, 1.0, 0.0], "green")
    monkeypatch.chdir(tmp_path)
    assert build_reward("plugins/by_path_rewards.py:Green").name == "green"  # relative to the working directory
    assert build_reward(f"{tmp_path}/plugins/by_path_rewards.py:Green").name == "green"
    config = tmp_path / "cfg" / "c.yaml"  # relative to the config's folder when not in the working directory
    _write_plugin(config.parent / "sub" / "by_config_path_rewards.py", "Grey", "grey", [0.5, 0.5, 0.5], "grey")
    config.write_text("model: {path: tiny}\ndata: {prompts: [a cat]}\n")
    load_config(config)
    assert build_reward("sub/by_config_path_rewards.py:Grey").name == "grey"


def test_a_failing_plugin_import_names_the_fix_in_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "needs_missing_package.py").write_text("import no_such_package_xyz  # noqa\n")
    monkeypatch.chdir(tmp_path)
    cases = {
        "no_such_rewards_xyz:Reward": ["cannot import module 'no_such_rewards_xyz'", "not installed, nor in the "
                                       "config's folder or the working directory", "put no_such_rewards_xyz.py there",
                                       "path/to/no_such_rewards_xyz.py:Reward"],
        "needs_missing_package:Reward": ["No module named 'no_such_package_xyz'", "a package the plug-in imports"],
        "missing/file_rewards.py:Reward": ["file 'missing/file_rewards.py' not found", "working directory, then "
                                           "the config's folder"],
    }
    for name, parts in cases.items():
        out = tmp_path / "run"
        rc = main(["train", *base_overrides(tiny_dir, out, **{"reward.name": name})])
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and len(lines[0]) <= MAX_MESSAGE, lines
        assert all(p in lines[0] for p in parts), lines
        assert not out.exists()


@pytest.mark.parametrize("method", ["fnf", "grpo"])
def test_sum_reward_logs_each_term(tiny_dir, tmp_path, method):
    """Terms are named by their rewards; a second term of the same name is numbered."""
    terms = ("[{name: color, weight: 1.0}, {name: color, weight: 3.0, args: {color: [0, 0, 1]}}, "
             "{name: color, weight: 0.5, args: {color: [0, 1, 0], name: green}}]")
    extra = {"method": method, "reward.name": "sum", "reward.args": f"{{terms: {terms}}}", "train.steps": 1}
    if method == "grpo":
        extra.update({"grpo.group_size": 2, "sampler.steps": 3})
    Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "run", **extra))).train(progress=False)
    row, = _rows(tmp_path / "run")
    total = row["reward/color"] + 3.0 * row["reward/color-2"] + 0.5 * row["reward/green"]
    assert math.isclose(row["reward"], total, rel_tol=1e-5), row
