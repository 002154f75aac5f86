"""benchmarks/gpu_check.py keeps working: its CPU smoke path (--tiny) runs every part at tiny size and
says in the JSON what it shrank or skipped. Timings are recorded, never asserted."""
import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load():
    spec = importlib.util.spec_from_file_location("_bench_gpu_check", BENCH / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_tiny_runs_every_part_on_cpu(tmp_path, capsys):
    check = _load()
    out = tmp_path / "gpu_check.json"
    assert check.main(["--tiny", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "tiny" and result["device"] == "cpu" and "machine" in result
    parts = result["parts"]
    assert parts["tests"]["status"] == "skipped" and "--tiny" in parts["tests"]["reason"]
    assert parts["sd15_step"]["status"] == "ok" and "--tiny" in parts["sd15_step"]["note"]
    assert [r["variant"] for r in parts["sd15_step"]["rows"]] == ["k2-ckpt-bf16"]
    assert parts["demo"]["status"] == "ok" and {r["method"] for r in parts["demo"]["table"]} == {"base", "draft", "fnf"}
    ev = parts["eval"]
    assert ev["status"] == "ok" and "--tiny" in ev["note"]
    assert set(ev["runs"]) == {"large", "small", "large-bfloat16", "large-float16"}
    assert {m: v["images"] for m, v in ev["runs"]["large"]["methods"].items()} == {"base": 4, "draft": 4, "fnf": 4}
    assert {m: v["images"] for m, v in ev["runs"]["small"]["methods"].items()} == {"base": 2, "draft": 2, "fnf": 2}
    assert ev["runs"]["large-bfloat16"]["runtime"]["dtype"] == "bfloat16"
    assert ev["runs"]["large"]["runtime"]["device"] == "cpu" and ev["runs"]["large"]["runtime"]["peak_gpu_mb"] is None
    table = out.with_suffix(".md").read_text()
    assert "| eval large | fnf, 4 images, float32" in table and "| tests |" in table and "skipped" in table


def test_gpu_check_rejects_unknown_parts(tmp_path, capsys):
    assert _load().main(["--tiny", "--parts", "demo,nope", "--work", str(tmp_path),
                         "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown part" in capsys.readouterr().err
