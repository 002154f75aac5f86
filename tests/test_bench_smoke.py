"""The benchmark scripts keep working (tiny sizes, a step or two; timings are not asserted)."""
import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sd15_step_cpu_path(tmp_path):
    out = tmp_path / "sd15.json"
    assert _load("sd15_step").main(["--small", "--device", "cpu", "--repeats", "1", "--sampler-steps", "2",
                                    "--variants", "k2-ckpt-bf16", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["variant"] == "k2-ckpt-bf16" and rows[0]["median_s"] > 0 and rows[0]["peak_mb"] > 0


def test_fnf_vs_draft_and_inference_scripts(tmp_path):
    assert _load("fnf_vs_draft").main(["--steps", "1", "--repeats", "1", "--sampler-steps", "3",
                                       "--out", str(tmp_path / "a.json")]) == 0
    rows = {r["variant"]: r for r in json.loads((tmp_path / "a.json").read_text())["rows"]}
    assert set(rows) == {"draft", "fnf-cold", "fnf-cold-2pass", "fnf-warm", "fnf-slack-4"}
    assert _load("inference").main(["--steps", "3", "--repeats", "1", "--batch", "2",
                                    "--out", str(tmp_path / "b.json")]) == 0
    assert len(json.loads((tmp_path / "b.json").read_text())["rows"]) == 5


def test_step_benchmark_on_a_flow_pipeline_folder(tiny_sd3_dir, tmp_path):
    """--model measures a real pipeline folder of any family (here a tiny SD3), with bf16 frozen weights."""
    out = tmp_path / "sd3.json"
    assert _load("sd15_step").main(["--model", str(tiny_sd3_dir), "--device", "cpu", "--repeats", "1",
                                    "--sampler-steps", "2", "--variants", "k1-nockpt-bf16", "--offload-text-encoders",
                                    "--out", str(out)]) == 0
    import json

    (row,) = json.loads(out.read_text())["rows"]
    assert row["variant"] == "k1-nockpt-bf16" and row["median_s"] > 0
