"""Command-line output (issue 27): --help-config wrapped to the terminal, quiet on a closed pipe (`| head`), and
eval's --help stating the prompts eval takes by default."""
import json
import os
import subprocess
import sys

from conftest import base_overrides

from focusnfix.cli import main
from focusnfix.config import field_help


def test_help_config_wraps_to_the_terminal_width(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {path: tiny}\ndata: {prompts: [a red circle, a blue square, a green star, a cat, a dog]}\n")
    keys = [key for key, _, _ in field_help()]
    for columns in ("100", "72", "300"):
        monkeypatch.setenv("COLUMNS", columns)
        width = min(int(columns), 100)
        for argv in (["train", "--help-config"], ["train", str(cfg), "lora.rank=8", "--help-config"]):
            assert main(argv) == 0
            lines = capsys.readouterr().out.splitlines()
            assert max(len(ln) for ln in lines) <= width, (columns, argv, max(lines, key=len))
            heads = [ln[2:].split()[0] if len(argv) > 2 else ln.split()[0] for ln in lines[len(argv) > 2:]
                     if ln[:1].strip() or ln[2:3].strip()]  # a key's line; its meaning wraps onto indented lines
            assert heads == keys
            text = " ".join(" ".join(ln.split()) for ln in lines)
            assert "AdamW learning rate. (in (0, 1000])" in text  # the meaning and its range, words intact


def _closed_pipe_run(argv: list[str]) -> subprocess.CompletedProcess:
    """``focusnfix ARGV`` writing to a pipe whose reader has already gone (as after `| head -1`)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "focusnfix", *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    finally:
        os.close(write)


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    proc = _closed_pipe_run(["train", "--help-config"])
    assert proc.stderr == "" and proc.returncode == 1  # no "focusnfix: error: Broken pipe", no "Exception ignored"
    proc = _closed_pipe_run(["report", str(tmp_path / "missing")])  # an error still reaches stderr
    assert proc.returncode == 2 and proc.stderr.startswith("focusnfix: error: ") and "Broken pipe" not in proc.stderr


def test_eval_help_states_the_default_prompts(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main(["eval", "--help"])
    except SystemExit:
        pass
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("default: the config's data.sample_prompts, else its data.prompts (not its data.prompt_file, "
            "data.prompt_set or data.dataset: name those here)") in help_text
    # what eval does without --prompts: data.sample_prompts when set, else data.prompts
    for extra, expected in (({"data.sample_prompts": "[a green star]"}, ["a green star"]),
                            ({}, ["a red circle", "a blue square"])):
        out = tmp_path / f"eval-{len(expected)}"
        config = tmp_path / "run" / "config.yaml"
        config.parent.mkdir(exist_ok=True)
        assert main(["eval", "--config", str(tmp_path / "none.yaml"), "--out", str(out)]) == 2  # (a missing config)
        overrides = base_overrides(tiny_dir, tmp_path / "unused", **extra)
        config.write_text("\n".join(_yaml_lines(overrides)))
        assert main(["eval", "--config", str(config), "--seeds", "0", "--out", str(out), "--no-progress"]) == 0
        rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        assert sorted({r["prompt"] for r in rows}) == sorted(expected)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    config.write_text("\n".join(_yaml_lines(base_overrides(tiny_dir, tmp_path / "unused", **{
        "data.prompts": "[]", "data.prompt_file": str(prompts)}))))
    capsys.readouterr()
    assert main(["eval", "--config", str(config), "--out", str(tmp_path / "e3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no data.sample_prompts or data.prompts" in err[0] and "give --prompts" in err[0]


def _yaml_lines(overrides: list[str]) -> list[str]:
    """``a.b=v`` overrides as a nested YAML mapping (two levels, as base_overrides writes them)."""
    sections: dict[str, list[str]] = {}
    for item in overrides:
        key, value = item.split("=", 1)
        section, _, name = key.partition(".")
        sections.setdefault(section, []).append(f"  {name}: {value}")
    return [line for section, rows in sections.items() for line in (f"{section}:", *rows)]
