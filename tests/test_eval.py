"""`focusnfix eval`: every method on identical (prompt, seed) pairs, metrics on known answers."""
import json
import math

import pytest
import torch
from conftest import base_overrides

from focusnfix.cli import main
from focusnfix.errors import FocusNFixError
from focusnfix.evaluation.metrics import change_metrics, psnr
from focusnfix.evaluation.runner import parse_method


def test_change_only_inside_the_mask_gives_zero_outside():
    base = torch.rand(2, 3, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:10, 4:10] = 1
    edited = base.clone()
    edited[..., 4:10, 4:10] = 1 - edited[..., 4:10, 4:10]
    m = change_metrics(edited, base, mask)
    assert torch.equal(m["outside_mse"], torch.zeros(2)) and torch.all(torch.isinf(m["outside_psnr"]))
    assert torch.equal(m["outside_mae"], torch.zeros(2))
    expected_mae = (edited - base).abs()[..., 4:10, 4:10].mean((1, 2, 3))
    assert torch.allclose(m["inside_mae"], expected_mae, atol=1e-6)
    assert torch.all(m["inside_mse"] > 0.05) and torch.all(m["inside_ssim"] < 0.9)
    same = change_metrics(base, base, mask)
    assert torch.all(torch.isinf(same["inside_psnr"])) and torch.allclose(same["inside_ssim"], torch.ones(2))
    empty = change_metrics(edited, base, torch.zeros(2, 1, 16, 16))
    assert torch.all(torch.isnan(empty["inside_mse"]))  # an empty region is nan, not 0
    assert math.isclose(psnr(torch.tensor([0.01])).item(), 20.0, rel_tol=1e-6)


def test_parse_methods(tmp_path):
    assert parse_method("base").kind == "base"
    rg = parse_method("rg-region:scale=30,start=0.2")
    assert rg.kind == "rg-region" and rg.params == {"scale": 30.0, "start": 0.2, "end": 1.0}
    assert parse_method("sld:strong").name == "sld-strong" and parse_method("sld").params["preset"] == "medium"
    named = parse_method("rg30=rg:scale=30")
    assert named.name == "rg30" and named.kind == "rg" and named.params["scale"] == 30.0
    for bad, msg in (("rg:scale=x", "must be a float"), ("rg:foo=1", "bad option"),
                     ("sld:extreme", "unknown SLD preset"), (str(tmp_path), "neither a run folder")):
        with pytest.raises(FocusNFixError, match=msg):
            parse_method(bad)


def test_eval_all_methods_on_identical_pairs(tiny_dir, tmp_path, capsys):
    run = tmp_path / "fnf"
    assert main(["train", "--no-progress", *base_overrides(tiny_dir, run, **{"train.steps": 3})]) == 0
    out = tmp_path / "eval"
    rc = main(["eval", "--config", str(run), "--methods", "base", f"fnf={run}", "rg:scale=100", "rg-region:scale=100",
               "sld:max", "--seeds", "1", "2", "--out", str(out), "--no-progress", "--set", "sampler.steps=4",
               "--batch-size", "3"])  # 4 pairs in batches of 3 and 1
    assert rc == 0
    meta = json.loads((out / "eval.json").read_text())
    assert meta["methods"] == ["base", "fnf", "rg", "rg-region", "sld-max"]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 5  # 2 prompts x 2 seeds x 5 methods
    pairs = {m: [(r["prompt"], r["seed"]) for r in rows if r["method"] == m] for m in meta["methods"]}
    assert all(p == pairs["base"] for p in pairs.values())  # identical (prompt, seed) pairs
    for r in rows:
        assert (out / r["image"]).is_file() and (out / r["mask"]).is_file() and (out / r["heatmap"]).is_file()
        if r["method"] == "base":
            assert r["outside_psnr"] is None and r.get("outside_psnr_inf") and r["outside_mse"] == 0.0
    changed = [r for r in rows if r["method"] != "base"]
    assert all(r["outside_mse"] > 0 or r["inside_mse"] > 0 for r in changed)
    assert (out / "curves" / "fnf.jsonl").is_file()
    assert not list(tmp_path.glob(".tmp-*"))
    rc = main(["eval", "--config", str(run), "--methods", "base", "--seeds", "1", "--out", str(out), "--no-progress"])
    assert rc == 2 and "not empty" in capsys.readouterr().err
