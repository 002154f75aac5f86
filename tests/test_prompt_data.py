"""Prompt data (issue 27): Flow-GRPO's .jsonl prompt files in the one reader train, sample and eval share, prompts
from a Hugging Face dataset (``data.dataset``: a folder saved with ``save_to_disk``, offline here), and one-line
errors for malformed lines, a missing ``prompt``, an unknown extension and a dataset that cannot be read."""
import json
import sys

import pytest
from conftest import base_overrides

from focusnfix.cli import main
from focusnfix.config import load_config
from focusnfix.prompts import PromptRecord, SUFFIXES, config_prompts, load_prompt_set, read_dataset, read_prompt_file

JSONL = ('{"prompt": "a red circle", "category": "shapes", "seed": 7}\n'
         '\n'
         '{"prompt": "a blue square", "tag": "ignored"}\n')


def _one_line(capsys, argv) -> tuple[int, list[str]]:
    rc = main(argv)
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_jsonl_prompts_are_read_as_prompts_by_train_sample_and_eval(tiny_dir, tmp_path, capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_text(JSONL)
    expected = [PromptRecord("a red circle", "shapes", 7), PromptRecord("a blue square", None, None)]
    assert read_prompt_file(path) == expected
    assert load_prompt_set(str(path)) == expected  # sample --prompts / eval --prompts
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run", **{"data.prompts": "[]",
                                                                             "data.prompt_file": str(path)}))
    assert config_prompts(cfg.data) == ["a red circle", "a blue square"]  # what train trains on, not the JSON text
    out = tmp_path / "samples"
    assert main(["sample", "--model", str(tiny_dir), "--prompts", str(path), "--steps", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert [e["prompt"] for e in json.loads((out / "index.json").read_text())] == ["a red circle", "a blue square"]
    capsys.readouterr()


@pytest.mark.parametrize("text, expected", [
    ('{"prompt": "a cat"}\n{"prompt": "a dog",}\n', "line 2 is not valid JSON"),
    ('{"prompt": "a cat"}\n\n{"caption": "a dog"}\n', "line 3 has no `prompt` field (found keys ['caption'])"),
    ('["a cat"]\n', "line 1 has no `prompt` field (found a JSON list)"),
    ('{"prompt": 3}\n', "line 1: `prompt` must be a string, got 3"),
    ('{"prompt": "a cat", "seed": -1}\n', "line 1: seed -1 is not an integer in [0, 2**63)"),
    ('{"prompt": "a cat", "seed": "7"}\n', "line 1: seed '7' is not an integer"),
    ('[' * 100_000 + '\n', "line 1 "),
])
def test_malformed_jsonl_lines_are_one_line_errors_naming_file_and_line(tiny_dir, tmp_path, capsys, text, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    out = tmp_path / "run"
    rc, lines = _one_line(capsys, ["train", *base_overrides(tiny_dir, out, **{"data.prompts": "[]",
                                                                             "data.prompt_file": str(path)})])
    assert rc == 2 and len(lines) == 1 and "bad.jsonl', line" in lines[0] and expected in lines[0], lines
    assert not out.exists()
    rc, lines = _one_line(capsys, ["sample", "--model", str(tiny_dir), "--prompts", str(path), "--out",
                                   str(tmp_path / "s")])
    assert rc == 2 and len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize("name", ["prompts.json", "prompts.yaml", "prompts"])
def test_unknown_prompt_file_extension_lists_the_supported_ones(tiny_dir, tmp_path, capsys, name):
    path = tmp_path / name
    path.write_text('{"prompt": "a cat"}\n')
    out = tmp_path / "run"
    rc, lines = _one_line(capsys, ["train", *base_overrides(tiny_dir, out, **{"data.prompts": "[]",
                                                                             "data.prompt_file": str(path)})])
    assert rc == 2 and len(lines) == 1 and "supported: .txt, .csv, .tsv, .jsonl" in lines[0], lines
    assert not out.exists() and SUFFIXES == (".txt", ".csv", ".tsv", ".jsonl")
    rc, lines = _one_line(capsys, ["sample", "--model", str(tiny_dir), "--prompts", str(path), "--out",
                                   str(tmp_path / "s")])
    assert rc == 2 and len(lines) == 1 and "supported: .txt, .csv, .tsv, .jsonl" in lines[0], lines


@pytest.fixture
def saved(tmp_path):
    """A tiny dataset saved with save_to_disk: a DatasetDict (train / test) and a single Dataset."""
    import datasets

    train = datasets.Dataset.from_dict({"caption": ["a red circle", None, " ", "a blue square"],
                                        "prompt": ["p0", "p1", "p2", "p3"], "kind": ["shape", "x", "y", None],
                                        "noise": [3, 4, 5, 6], "seed": [0, 1, 2, 2**40]})
    test = datasets.Dataset.from_dict({"prompt": ["a green star"], "category": ["star"], "seed": [11]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    test.save_to_disk(str(tmp_path / "single"))
    return tmp_path


def test_dataset_saved_to_disk_gives_the_prompts(tiny_dir, saved, capsys):
    assert read_dataset(str(saved / "dd"), "test") == [PromptRecord("a green star", "star", 11)]
    assert read_dataset(str(saved / "single")) == [PromptRecord("a green star", "star", 11)]  # the split: its own
    assert read_dataset(str(saved / "dd"), "train", "caption", "kind", "noise") == [
        PromptRecord("a red circle", "shape", 3), PromptRecord("a blue square", None, 6)]  # null / blank rows skipped
    assert [r.seed for r in read_dataset(str(saved / "dd"))] == [0, 1, 2, 2**40]  # `seed` used when present
    assert load_prompt_set(str(saved / "single")) == [PromptRecord("a green star", "star", 11)]  # --prompts DIR
    overrides = {"data.prompts": "[a yellow moon]", "data.dataset": str(saved / "dd"),
                 "data.dataset_prompt_column": "caption", "train.steps": 1}
    cfg = load_config(None, base_overrides(tiny_dir, saved / "run", **overrides))
    assert config_prompts(cfg.data) == ["a yellow moon", "a red circle", "a blue square"]
    only = {"data.prompts": "[]", "data.dataset": str(saved / "dd"), "data.dataset_split": "test", "train.steps": 1}
    assert main(["train", *base_overrides(tiny_dir, saved / "run", **only), "--no-progress"]) == 0
    assert (saved / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    capsys.readouterr()


def test_dataset_errors_are_one_line(tiny_dir, saved, capsys, monkeypatch):
    cases = [
        ({"data.dataset": str(saved / "dd"), "data.dataset_split": "validation"},
         2, "has no split 'validation'; its splits: 'train', 'test'"),
        ({"data.dataset": str(saved / "dd"), "data.dataset_prompt_column": "text"},
         2, "has no column 'text' (columns: 'caption', 'prompt', 'kind', 'noise', 'seed'); set "
            "data.dataset_prompt_column"),
        ({"data.dataset": str(saved / "dd"), "data.dataset_seed_column": "kind"},
         2, "row 0: seed 'shape' is not an integer in [0, 2**63)"),
        ({"data.dataset": str(saved / "nothing-here")}, 2, "not found (a folder written by save_to_disk"),
        ({"data.dataset": str(saved / "dd" / "dataset_dict.json")}, 2, "is a file"),
        ({"data.dataset": "nobody/no-such-dataset"}, 1, "the Hub could not be reached"),  # offline in the tests
    ]
    for extra, status, expected in cases:
        out = saved / "run"
        rc, lines = _one_line(capsys, ["train", *base_overrides(tiny_dir, out, **{"data.prompts": "[]", **extra})])
        assert rc == status and len(lines) == 1 and expected in lines[0], (extra, lines)
        assert not out.exists()
    monkeypatch.setitem(sys.modules, "datasets", None)  # the [datasets] extra not installed
    rc, lines = _one_line(capsys, ["train", *base_overrides(tiny_dir, saved / "run", **{
        "data.prompts": "[]", "data.dataset": str(saved / "dd")})])
    assert rc == 2 and len(lines) == 1 and "pip install 'focusnfix[datasets]'" in lines[0], lines
