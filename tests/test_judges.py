"""Independent judges: the OCR judge on text rendered with PIL, the Haar face judge on a real photo shipped by
scikit-image, and `focusnfix eval --judge` end to end on the tiny model (numbers with CIs in eval.json and the
report; an unknown judge is one line and status 2)."""
import importlib.util
import json
import math
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from focusnfix.cli import main
from focusnfix.errors import FocusNFixError
from focusnfix.rewards.base import RewardOutput
from focusnfix.rewards.ocr import match_score, normalize, quoted_texts, substring_distance
from focusnfix.rewards.registry import build_reward


def _have_haar() -> bool:
    if importlib.util.find_spec("cv2") is None:
        return False
    import cv2

    return hasattr(cv2, "CascadeClassifier")


HAVE_OCR = importlib.util.find_spec("rapidocr_onnxruntime") is not None
HAVE_HAAR = _have_haar() and importlib.util.find_spec("skimage") is not None
needs_ocr = pytest.mark.skipif(not HAVE_OCR, reason="needs rapidocr-onnxruntime: pip install focusnfix[judges]")
needs_haar = pytest.mark.skipif(not HAVE_HAAR, reason="needs OpenCV 4.x (Haar cascades) and scikit-image: "
                                "pip install focusnfix[judges,test]")


class MeanBrightness:
    """A plug-in judge (``--judge test_judges:MeanBrightness``): the mean grey level, no heatmap."""

    name, differentiable, metric_label = "brightness", False, "mean brightness"

    def __call__(self, images, prompts):
        return RewardOutput(score=images.mean(dim=(1, 2, 3)))


class Broken(MeanBrightness):
    """A plug-in judge that fails at run time."""

    def __call__(self, images, prompts):
        raise RuntimeError("sensor on fire")


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


def test_the_text_match_is_what_the_docs_say():
    assert quoted_texts('a sign that says "Open 24h", a “CAFÉ” and the cat\'s \'EXIT\'') == ["Open 24h", "CAFÉ",
                                                                                             "EXIT"]
    assert quoted_texts("no quotes, a cat's hat") == []
    assert normalize("Open, 24 h!") == "open24h"
    assert substring_distance("open", "xxopenxx") == 0 and substring_distance("open", "") == 4
    assert substring_distance("open", "0pen") == 1 and substring_distance("kitten", "sitting") == 2  # "sittin"
    assert match_score("OPEN", "we are open") == 1.0 and match_score("open", "opn") == 0.75
    assert match_score("closed", "") == 0.0 and math.isnan(match_score("!!", "anything"))


@needs_ocr
def test_ocr_reads_a_rendered_word_where_it_is():
    img = Image.new("RGB", (224, 160), (236, 231, 222))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=40)  # Pillow's bundled font: the same on every machine
    draw.text((48, 70), "OPEN", fill=(25, 25, 25), font=font)
    x0, y0, x1, y1 = draw.textbbox((48, 70), "OPEN", font=font)
    blank = Image.new("RGB", (224, 160), (236, 231, 222))
    images = torch.stack([_to_tensor(img), _to_tensor(blank)])
    ocr = build_reward("ocr")
    out = ocr(images, ['a shop sign that says "open"', 'a shop sign that says "open"'])
    assert out.score.tolist() == [1.0, 0.0] and ocr.differentiable is False
    assert [t.upper() for t, _ in out.info["texts"][0]] == ["OPEN"] and out.info["texts"][1] == []
    heat = out.heatmap[0, 0]
    assert out.heatmap.shape == (2, 1, 160, 224) and out.heatmap[1].sum() == 0
    ys, xs = torch.nonzero(heat, as_tuple=True)
    # the text box (with RapidOCR's unclip margin and our 4 px dilation) covers the glyphs and little else
    assert xs.min() <= x0 and xs.max() >= x1 - 1 and ys.min() <= y0 + 2 and ys.max() >= y1 - 1
    assert xs.min() >= x0 - 16 and xs.max() <= x1 + 16 and ys.min() >= y0 - 16 and ys.max() <= y1 + 16
    lines = out.info["texts"][0]
    read = [(t, c, None) for t, c in lines]
    assert ocr.score_of(read, 'a "CLOSED" sign') < 0.5  # the wrong word
    assert math.isnan(ocr.score_of(read, "a shop sign"))  # nothing quoted: not applicable
    assert build_reward("ocr", target="open", no_text=0.0).score_of(read, "a shop sign") == 1.0


def test_a_missing_judges_extra_is_one_line_naming_the_install(monkeypatch):
    from focusnfix.rewards import ocr

    ocr._engine.cache_clear()
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # as if not installed
    try:
        with pytest.raises(FocusNFixError, match=r"pip install focusnfix\[judges\]"):
            build_reward("ocr")
    finally:
        ocr._engine.cache_clear()


@needs_haar
def test_haar_finds_the_astronauts_face_and_masks_it():
    from skimage import data

    from focusnfix.config import MaskConfig
    from focusnfix.rewards.compose import problem_mask

    photo = torch.from_numpy(data.astronaut().astype(np.float32) / 255.0).permute(2, 0, 1)  # 512 x 512
    images = torch.stack([photo, torch.full_like(photo, 0.5)])
    faces = build_reward("haar-faces")
    out = faces(images, ["", ""])
    assert out.score.tolist() == [1.0, 0.0] and out.heatmap[1].sum() == 0
    (x, y, w, h, cascade), = out.info["boxes"][0]  # one face: Eileen Collins', upper middle left of the photo
    assert cascade == "frontalface_default" and 80 <= w <= 120 and 80 <= h <= 120
    assert 200 <= x + w / 2 <= 250 and 90 <= y + h / 2 <= 140
    # as a mask source, the NudeNet-box contract: heatmap = the box dilated by 8 px, thresholded as it is
    mask, heat = problem_mask(faces, images, ["", ""], MaskConfig(source="heatmap", dilate=0))
    ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (x - 8, x + w - 1 + 8, y - 8, y + h - 1 + 8)
    assert torch.equal(mask, heat) and 0.03 < mask[0].mean() < 0.06
    area = build_reward("haar-faces", score="area")(images[:1], [""]).score
    assert math.isclose(area.item(), -100.0 * w * h / 512**2, rel_tol=1e-5)
    with pytest.raises(FocusNFixError, match="unknown Haar cascade 'nose'; bundled: .*frontalface_default"):
        build_reward("haar-faces", cascades=["nose"])


def _config(tmp_path, tiny_dir):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n  path: {tiny_dir}\ndata:\n  prompts: ['a sign that says \"OPEN\"', a red circle]\n")
    return cfg


def test_eval_judges_end_to_end(tiny_dir, tmp_path):
    out = tmp_path / "eval"
    judges = ["color", "test_judges:MeanBrightness"] + ["ocr"] * HAVE_OCR
    rc = main(["eval", "--config", str(_config(tmp_path, tiny_dir)), "--methods", "base", "rg:scale=100",
               "--seeds", "1", "2", "--set", "sampler.steps=3", "--out", str(out), "--no-progress",
               *[a for j in judges for a in ("--judge", j)]])
    assert rc == 0
    meta = json.loads((out / "eval.json").read_text())
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    bright, color = "judge_test_judges_meanbrightness", "judge_color"
    assert meta["metrics"][bright]["label"] == "judge test_judges:MeanBrightness: mean brightness"
    assert meta["metrics"][color]["label"].startswith("judge color [training reward]")
    assert meta["metrics"][color]["training_reward"] and not meta["metrics"][bright]["training_reward"]
    for r in rows:  # the plug-in's numbers are the images' mean brightness (8-bit images as saved)
        image = _to_tensor(Image.open(out / r["image"]).convert("RGB"))
        assert math.isclose(r[bright], image.mean().item(), rel_tol=1e-5)
        assert r[color] == pytest.approx(r["reward"], abs=1e-6)  # the training reward, labelled as such
    summary = meta["judges"][bright]["methods"]
    base, rg = summary["base"], summary["rg"]
    assert base["n"] == rg["n"] == 4 and base["ci_kind"] == "bootstrap"
    assert base["ci"][0] <= base["mean"] <= base["ci"][1]
    assert rg["delta"] == pytest.approx(rg["mean"] - base["mean"]) and rg["delta_ci"][0] <= rg["delta"] <= \
        rg["delta_ci"][1]
    if HAVE_OCR:  # noise images read nothing: a 0/1 judge gets Wilson's interval; the unquoted prompt is left out
        ocr = meta["judges"]["judge_ocr"]["methods"]["base"]
        assert ocr["n"] == 2 and ocr["mean"] == 0.0 and ocr["ci_kind"] == "wilson" and ocr["ci"][1] > 0.5
    html = (out / "report.html").read_text()
    glance = html[html.index("id='headline'"):html.index("</section>", html.index("id='headline'"))]
    assert glance.index("MeanBrightness") < glance.index("[training reward]")  # independent judges lead
    assert "target reward" not in glance  # the training reward does not lead when judges are given
    judges = html[html.index("id='judges'"):]
    assert "judge test_judges:MeanBrightness" in judges and re.search(r"0\.\d+ <small>\[0\.\d+, 0\.\d+\]", judges)


def test_unknown_or_malformed_judge_is_one_line_status_2(tiny_dir, tmp_path, capsys):
    cfg = str(_config(tmp_path, tiny_dir))
    for judge, message in (("nope", "unknown judge 'nope'; known: .*haar-faces.*ocr.*, or a plug-in"),
                           ("ocr=[1, 2]", "must be a YAML mapping"), ("ocr={target: [", "not YAML"),
                           ("os:system", "standard-library")):
        rc = main(["eval", "--config", cfg, "--judge", judge, "--out", str(tmp_path / "e"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert re.search(message, err), err
    assert not (tmp_path / "e").exists()


def test_a_judge_failing_at_run_time_is_one_line_status_1(tiny_dir, tmp_path, capsys):
    rc = main(["eval", "--config", str(_config(tmp_path, tiny_dir)), "--limit", "1", "--seeds", "0", "--set",
               "sampler.steps=2", "--judge", "test_judges:Broken", "--out", str(tmp_path / "e"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.splitlines() == [err] and "judge 'test_judges:Broken' failed: RuntimeError: sensor" in err
    assert not (tmp_path / "e").exists()
