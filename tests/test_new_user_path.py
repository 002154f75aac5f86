"""Issue 27: the new user's path of docs/walkthrough.md, scripted on the built-in world through the CLI: .jsonl
prompts -> `focusnfix train configs/world-artifact.yaml` with train.eval_every and a judge -> `focusnfix eval
--judge` -> `focusnfix export --format kohya`, loaded by diffusers and equal to the peft LoRA -> `focusnfix rate
--only-problems` driven in Chromium -> `focusnfix push --dry-run` leaving the run folder byte-identical.

Shortened to run in about a minute on a CPU: 3 training steps of a 4-step sampler, 2 held-out prompts x 2 seeds. Each
step's own details are tested at length elsewhere (test_training_options, test_judges, test_export_kohya,
test_rating*, test_hub); this module checks that the steps fit together as the walkthrough chains them."""
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_export_kohya import ATOL, _images, _latents, _lora_layers, _modules, _pipe
from test_hub import FakeHub
from test_judges import _to_tensor
from test_rating import CHROMIUM, CHROMIUM_ARGS, Server, _choose, _playwright, _rows_of

from focusnfix.backbones.lora import LORA_FILE
from focusnfix.cli import main
from focusnfix.rating.design import parse_filter
from focusnfix.rating.tasks import load_study
from focusnfix.runs.kohya import SUFFIX
from focusnfix.world import pipeline_path

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "world-artifact.yaml")
TRAIN_PROMPTS = ["a small red circle on the left, gray background", "a large blue square in the center, white "
                 "background", "a small green triangle on the right, black background"]
# held out; at seeds 7 and 8 the base model draws its artifact on the blue square (non-empty M) and not on the disc
HELD_OUT = ["a large red disc in the center, white background", "a small blue square on the left, gray background"]
SEEDS = ["7", "8"]
JUDGE = "test_judges:MeanBrightness"  # a plug-in judge class (tests/ is on sys.path, as a user's folder would be)
KEY = "judge_test_judges_meanbrightness"
PROBLEM = "a smudge-like artifact on a shape"


def _jsonl(path: Path, prompts) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "category": "shapes"}) + "\n" for p in prompts))
    return path


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    """The walkthrough's sections 2-4, shortened: a run trained from a .jsonl file, and its held-out eval."""
    root = tmp_path_factory.mktemp("new-user")
    run, out = root / "fnf", root / "eval"
    prompts = _jsonl(root / "prompts.jsonl", TRAIN_PROMPTS)
    rc = main(["train", CONFIG, "data.prompt_set=null", f"data.prompt_file={prompts}",
               "data.sample_prompts=[]", "train.steps=3", "train.batch_size=2", "sampler.steps=4",
               "train.eval_every=2", "data.eval_prompts=[a large green square in the center, white background]",
               "data.eval_seeds=[5]", f"train.eval_judges=[{JUDGE}]", f"train.output_dir={run}", "--no-progress"])
    assert rc == 0
    rc = main(["eval", "--config", CONFIG, "--methods", "base", f"fnf={run}", "--prompts",
               str(_jsonl(root / "held-out.jsonl", HELD_OUT)), "--seeds", *SEEDS, "--set", "sampler.steps=4",
               "--judge", JUDGE, "--out", str(out), "--no-progress"])
    assert rc == 0
    return root, run, out


def test_train_reads_the_jsonl_and_logs_the_held_out_judge(path):
    root, run, _ = path
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    evaluated = {r["step"] for r in rows if f"eval/{KEY}" in r and "eval/reward" in r}
    assert evaluated == {2, 3}  # every 2nd step and after the last, not step 1
    for r in rows:
        if r["step"] in evaluated:
            assert 0.0 < r[f"eval/{KEY}"] < 1.0 and math.isfinite(r["eval/reward"])
    # data.sample_prompts=[]: the grid shows the first 4 training prompts; 3 rows = the file's 3 prompts (the world's
    # prompt set, which this replaced, would give 4)
    with Image.open(run / "samples" / "final.png") as grid:
        assert json.loads(grid.text["focusnfix-grid"])["rows"] == len(TRAIN_PROMPTS)
    assert f"eval/{KEY}" in (run / "lora" / "README.md").read_text()


def test_eval_scores_every_image_with_the_judge_and_the_worlds_own(path):
    _, run, out = path
    meta = json.loads((out / "eval.json").read_text())
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["prompt"], r["seed"]) for r in rows) == sorted(
        (m, p, int(s)) for m in ("base", "fnf") for p in HELD_OUT for s in SEEDS)
    for r in rows:  # the plug-in's numbers are the saved images' mean brightness
        image = _to_tensor(Image.open(out / r["image"]).convert("RGB"))
        assert math.isclose(r[KEY], image.mean().item(), rel_tol=1e-5)
    assert {"defect_artifact", "alignment"} <= set(meta["metrics"])  # the world's judges, added by the eval
    assert max(r["outside_mae"] for r in rows if r["method"] == "fnf") > 1e-3  # the LoRA was loaded and acts
    summary = meta["judges"][KEY]["methods"]
    assert summary["base"]["n"] == summary["fnf"]["n"] == len(HELD_OUT) * len(SEEDS)
    assert "judge test_judges:MeanBrightness" in (out / "report.html").read_text()


def test_kohya_export_loads_in_diffusers_and_equals_the_peft_lora(path):
    """The world is an SD 1.x-format pipeline, so its run holds a kohya file; `focusnfix export` rewrites it equal."""
    _, run, _ = path
    lora = run / "lora"
    kohya = lora / f"fnf{SUFFIX}"
    trained = load_file(str(kohya))
    kohya.unlink()
    assert main(["export", str(run), "--format", "kohya"]) == 0
    exported = load_file(str(kohya))
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in trained)
    from diffusers import StableDiffusionPipeline

    base = _pipe(StableDiffusionPipeline, pipeline_path())
    latents = _latents(base)
    reference = _images(base, latents)
    peft_pipe, kohya_pipe = _pipe(StableDiffusionPipeline, pipeline_path()), _pipe(StableDiffusionPipeline,
                                                                                  pipeline_path())
    peft_pipe.load_lora_weights(lora, weight_name=LORA_FILE)
    kohya_pipe.load_lora_weights(str(kohya))  # diffusers' own kohya path (lora_unet_* keys)
    assert _lora_layers(peft_pipe.unet) == _lora_layers(kohya_pipe.unet) == len(_modules(exported)) > 0
    ours, theirs = _images(peft_pipe, latents), _images(kohya_pipe, latents)
    assert (ours - reference).abs().max() > 1e-3  # the LoRA changes the images: the comparison means something
    assert (ours - theirs).abs().max() <= ATOL  # alpha = rank here: the same float32 tensors, scale 1 (exact)


def test_rating_only_problems_in_chromium(path):
    root, _, out = path
    sync_playwright = _playwright()  # skips without Debian's chromium where it cannot be installed
    from playwright.sync_api import expect

    base = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    problems = {r["i"] for r in base if r["method"] == "base" and r["inside_mae"] is not None}  # M(Î0) non-empty
    assert 0 < len(problems) < len(HELD_OUT) * len(SEEDS)  # the filter has something to keep and to leave out
    study = load_study(out, only_problems=parse_filter("mask"))
    assert {t.sample for t in study.tasks.values()} == problems
    db = root / "ratings.sqlite"
    server = Server(out, db, root / "rate.log", ("--only-problems", "--problem", PROBLEM, "--per-rater", "40"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(60_000)
                page.goto(server.url)
                assert PROBLEM in page.inner_text("#problem")
                page.fill("#name", "Ada")
                page.click("#start button[type=submit]")
                page.wait_for_selector("#answer")
                token = page.url.rsplit("/", 1)[1]
                n = len(study.tasks)
                assert page.inner_text("#count").strip() == f"0 / {n}"  # --per-rater 40 > n: every pair
                for k in range(n):
                    page.wait_for_selector("#answer[data-ready=true]")
                    tid = page.get_attribute("#answer", "data-task")
                    assert tid in study.tasks and page.inner_text("#prompt") == study.tasks[tid].prompt
                    for key, value in (("fixed", "yes"), ("worse", "no"), ("prefer", "equal")):
                        _choose(page, key, value)
                    page.click("#submit")
                    if k + 1 < n:
                        expect(page.locator("#count")).to_have_text(f"{k + 1} / {n}")
                expect(page.locator("#done progress")).to_have_attribute("value", str(n))  # the thank-you page
            finally:
                browser.close()
    finally:
        server.kill()
    rows = _rows_of(db, token)
    assert set(rows) == set(study.tasks)  # one answer per served pair, only the samples with a problem
    assert all(answers == {"fixed": "yes", "worse": "no", "prefer": "equal"} for answers, _, _ in rows.values())


def test_push_dry_run_leaves_the_run_byte_identical(path, monkeypatch, capsys):
    _, run, _ = path
    hub = FakeHub(monkeypatch)

    def state():
        return {p.relative_to(run).as_posix(): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
                for p in sorted(run.rglob("*"))}

    before = state()
    rc = main(["push", str(run), "--repo-id", "you/my-fix", "--dry-run"])
    printed = capsys.readouterr().out
    assert rc == 0 and not hub.calls and state() == before
    assert LORA_FILE in printed and f"fnf{SUFFIX}" in printed and "README.md" in printed
