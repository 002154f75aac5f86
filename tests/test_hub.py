"""Sharing a run: the model card in lora/, `focusnfix push` (Hub calls mocked: no network), and the
train.report_to trackers."""
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import base_overrides

from focusnfix.cli import main
from focusnfix.config import load_config
from focusnfix.errors import ConfigError
from focusnfix.training.trainer import Trainer

try:
    import tensorboard  # noqa: F401

    HAVE_TENSORBOARD = True
except ImportError:
    HAVE_TENSORBOARD = False


def run_cli(capsys, argv):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, [ln for ln in captured.err.strip().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory):
    """One finished 2-step run (sample grids at each step; TensorBoard when installed)."""
    out = tmp_path_factory.mktemp("hub") / "run"
    extra = {"train.sample_every": 1, "train.report_to": "tensorboard" if HAVE_TENSORBOARD else "none"}
    Trainer(load_config(None, base_overrides(tiny_dir, out, **extra))).train(progress=False)
    return out


class FakeHub:
    """Records what HfApi would do; upload_folder filters the folder as the real one does."""

    def __init__(self, monkeypatch, fail=None, public=False):
        import huggingface_hub
        from huggingface_hub.utils import filter_repo_objects

        self.calls, self.uploaded = [], {}

        def create_repo(api, repo_id, **kw):
            self.calls.append(("create_repo", repo_id, kw))
            if fail is not None:
                raise fail
            return SimpleNamespace(url=f"https://huggingface.co/{repo_id}")

        def repo_info(api, repo_id, **kw):
            self.calls.append(("repo_info", repo_id, kw))
            return SimpleNamespace(private=not public)

        def upload_folder(api, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kw):
            self.calls.append(("upload_folder", repo_id, kw))
            names = sorted(p.name for p in Path(folder_path).iterdir() if p.is_file())
            for name in filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
                self.uploaded[name] = (Path(folder_path) / name).read_bytes()

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", repo_info)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests' own offline switch
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")


def _card(text: str):
    from huggingface_hub import ModelCard

    return ModelCard(text)


def test_training_writes_a_model_card_and_diffusers_loads_the_folder(run, tiny_dir):
    from diffusers import StableDiffusionPipeline

    lora = run / "lora"
    assert {p.name for p in lora.iterdir()} >= {"README.md", "samples.png", "pytorch_lora_weights.safetensors",
                                                "lora-sample.png", "run_kohya.safetensors"}
    assert (lora / "samples.png").read_bytes() == (run / "samples" / "final.png").read_bytes()
    card = _card((lora / "README.md").read_text())
    meta = yaml.safe_load((lora / "README.md").read_text().split("---")[1])  # the front matter is plain YAML
    assert meta == card.data.to_dict()
    assert {"focusnfix", "lora", "diffusers", "text-to-image"} <= set(meta["tags"])
    assert meta["license"] == "other" and "base_model" not in meta  # a local base folder: no Hub id to name
    assert meta["pipeline_tag"] == "text-to-image" and meta["library_name"] == "diffusers"
    text = card.text
    for needle in ("Focus-N-Fix", "`color`", "| λ (region constraint) | 1.0", "| K (steps with gradient) | 2 |",
                   "| training steps | 2 of 2", "rank 2", "No trigger word",
                   "from diffusers import DDIMScheduler, StableDiffusionPipeline",
                   'pipe.load_lora_weights("run/lora")', "](samples.png)", "2501.06481",
                   "see the base model's license", "| sampler | DDIM (η = 0), T = 4 steps",
                   "use `run_kohya.safetensors` (kohya format"):
        assert needle in text, needle
    assert str(tiny_dir) not in text  # no local path of the base model in a public card
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(lora)  # README.md, samples.png and lora_config.json beside the weights
    assert pipe.get_list_adapters()["unet"]


def test_push_uploads_weights_card_and_sample(run, tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "lora" / "README.md").unlink()  # push writes a missing card
    (copy / "lora" / "stray.txt").write_text("not uploaded")
    rc, out, err = run_cli(capsys, ["push", str(copy), "--repo-id", "you/tiny-fnf", "--base-model",
                                    "CompVis/stable-diffusion-v1-4"])
    assert rc == 0, err
    assert "https://huggingface.co/you/tiny-fnf" in out
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][1] == "you/tiny-fnf" and hub.calls[0][2]["exist_ok"] and not hub.calls[0][2]["private"]
    assert sorted(hub.uploaded) == ["README.md", "lora-sample.png", "lora_config.json",
                                    "pytorch_lora_weights.safetensors", "run_kohya.safetensors", "samples.png"]
    card = _card(hub.uploaded["README.md"].decode())
    assert card.data.base_model == "CompVis/stable-diffusion-v1-4" and card.data.license == "creativeml-openrail-m"
    assert {"focusnfix", "lora", "diffusers", "text-to-image"} <= set(card.data.tags)
    for needle in ("Focus-N-Fix", "`color`", "λ (region constraint) | 1.0", 'pipe.load_lora_weights("you/tiny-fnf")'):
        assert needle in card.text, needle
    assert (copy / "lora" / "README.md").read_bytes() == hub.uploaded["README.md"]  # the card stays in the run


def test_push_points_an_existing_card_at_the_repo_and_private_refuses_a_public_repo(run, tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch, public=True)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rc, _, err = run_cli(capsys, ["push", str(copy), "--repo-id", "you/x", "--private"])
    assert rc == 2 and len(err) == 1 and "is public" in err[0] and not hub.uploaded
    assert 'pipe.load_lora_weights("you/x")' in (copy / "lora" / "README.md").read_text()


def test_push_dry_run_uploads_nothing(run, tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    rc, out, err = run_cli(capsys, ["push", str(run), "--repo-id", "you/tiny-fnf", "--dry-run"])
    assert rc == 0 and not hub.calls, err
    assert "pytorch_lora_weights.safetensors" in out and "README.md" in out


@pytest.mark.parametrize("case", ["missing", "not-a-run", "no-lora", "repo-id", "token-env"])
def test_push_bad_input_is_one_line_status_2(run, tmp_path, monkeypatch, capsys, case):
    hub = FakeHub(monkeypatch)
    target, repo, extra = run, "you/tiny-fnf", []
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "not-a-run":
        target = tmp_path
    elif case == "no-lora":
        target = tmp_path / "run"
        shutil.copytree(run, target, ignore=shutil.ignore_patterns("lora"))
    elif case == "repo-id":
        repo = "bad name/x"
    else:
        extra = ["--token-env", "FOCUSNFIX_NO_SUCH_VAR"]
    rc, _, err = run_cli(capsys, ["push", str(target), "--repo-id", repo, *extra])
    assert rc == 2 and len(err) == 1 and err[0].startswith("focusnfix: error: "), err
    assert not hub.calls
    assert {"missing": "does not exist", "not-a-run": "not a run folder", "no-lora": "no lora/",
            "repo-id": "not a Hub repo id", "token-env": "FOCUSNFIX_NO_SUCH_VAR"}[case] in err[0]


@pytest.mark.parametrize("failure", ["offline", "network", "server", "token"])
def test_push_hub_failures(run, monkeypatch, capsys, failure):
    import huggingface_hub

    error = {"network": ConnectionError("Connection refused"),
             "server": RuntimeError("Server Error"), "token": RuntimeError("Unauthorized")}.get(failure)
    if failure in ("server", "token"):
        error.response = SimpleNamespace(status_code=503 if failure == "server" else 401)
    hub = FakeHub(monkeypatch, fail=error)
    if failure == "offline":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    rc, _, err = run_cli(capsys, ["push", str(run), "--repo-id", "you/tiny-fnf"])
    assert len(err) == 1 and err[0].startswith("focusnfix: error: ")
    assert rc == (2 if failure == "token" else 1)
    assert {"offline": "HF_HUB_OFFLINE", "network": "could not reach the Hub", "server": "503",
            "token": "refused the token"}[failure] in err[0]
    assert not hub.uploaded


def test_push_to_hub_config_checks(tiny_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="train.push_to_hub needs train.hub_repo_id"):
        load_config(None, base_overrides(tiny_dir, tmp_path / "r", **{"train.push_to_hub": "true"}))
    with pytest.raises(ConfigError, match="train.hub_repo_id"):
        load_config(None, base_overrides(tiny_dir, tmp_path / "r", **{"train.hub_repo_id": "a/b/c"}))
    with pytest.raises(ConfigError, match="train.report_to must be"):
        load_config(None, base_overrides(tiny_dir, tmp_path / "r", **{"train.report_to": "mlflow"}))
    # offline (the tests' HF_HUB_OFFLINE=1): refused before any work
    rc, _, err = run_cli(capsys, ["train", *base_overrides(tiny_dir, tmp_path / "r", **{"train.push_to_hub": "true",
                                                                                       "train.hub_repo_id": "you/x"})])
    assert rc == 2 and len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and not (tmp_path / "r").exists()


def test_push_to_hub_at_the_end_of_training(tiny_dir, tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    cfg = load_config(None, base_overrides(tiny_dir, tmp_path / "run", **{
        "train.push_to_hub": "true", "train.hub_repo_id": "you/end-of-run", "method": "draft", "train.steps": 1}))
    Trainer(cfg).train(progress=False)
    assert hub.calls[0][1] == "you/end-of-run" and "README.md" in hub.uploaded
    text = hub.uploaded["README.md"].decode()
    assert ("DRaFT" in text and 'pipe.load_lora_weights("you/end-of-run")' in text
            and "| λ (region constraint) | 0 (none) |" in text)


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="tensorboard is not installed (pip install 'focusnfix[track]')")
def test_report_to_tensorboard_logs_the_metrics_scalars_and_sample_grids(run):
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((run / "tensorboard").rglob("events.out.tfevents.*"))
    tags = {"scalars": set(), "images": set()}
    steps = set()
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"images": 0})
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags()[kind])
        if "train/reward" in acc.Tags()["scalars"]:
            steps |= {e.step for e in acc.Scalars("train/reward")}
            assert len(acc.Images("samples")) == 3  # step 1, step 2, final
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    numeric = {k for k, v in rows[0].items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert {f"train/{k}" for k in numeric} <= tags["scalars"] and "samples" in tags["images"]
    assert steps == {r["step"] for r in rows}


@pytest.mark.parametrize("report_to", ["tensorboard", "wandb", "all"])
def test_missing_tracker_package_is_one_line_status_2(tiny_dir, tmp_path, monkeypatch, capsys, report_to):
    import focusnfix.training.tracking as tracking

    monkeypatch.setattr(tracking, "installed", lambda name: False)
    rc, _, err = run_cli(capsys, ["train", *base_overrides(tiny_dir, tmp_path / "r", **{"train.report_to": report_to})])
    assert rc == 2 and len(err) == 1 and not (tmp_path / "r").exists()
    for name in ("tensorboard", "wandb"):
        assert (f"pip install {name}" in err[0]) == (report_to in (name, "all"))


def test_push_refuses_a_lora_with_nan_weights(run, tmp_path, monkeypatch, capsys):
    """A diverged run's LoRA (a NaN tensor) is not uploaded: status 2, one line naming the tensor, nothing written
    (dry run or not)."""
    import torch
    from safetensors.torch import load_file, save_file

    hub = FakeHub(monkeypatch)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = copy / "lora" / "pytorch_lora_weights.safetensors"
    tensors = load_file(weights)
    bad = sorted(tensors)[-1]
    tensors[bad] = torch.full_like(tensors[bad], float("nan"))
    save_file(tensors, weights)
    card = (copy / "lora" / "README.md").read_bytes()
    for extra in ([], ["--dry-run"]):
        rc, out, err = run_cli(capsys, ["push", str(copy), "--repo-id", "you/other", *extra])
        assert rc == 2 and len(err) == 1 and "NaN/Inf" in err[0] and bad[-40:] in err[0], err
        assert not hub.calls and not out and (copy / "lora" / "README.md").read_bytes() == card


def test_push_dry_run_writes_nothing(run, tmp_path, monkeypatch, capsys):
    """--dry-run neither points an existing model card at the repo nor writes a missing one; it says what the
    push would write."""
    hub = FakeHub(monkeypatch)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)

    def state():
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (copy / "lora").iterdir()}

    before = state()
    rc, out, err = run_cli(capsys, ["push", str(copy), "--repo-id", "you/another-name", "--dry-run"])
    assert rc == 0 and not hub.calls and state() == before, err
    assert "README.md" in out
    (copy / "lora" / "README.md").unlink()
    before = state()
    rc, out, err = run_cli(capsys, ["push", str(copy), "--repo-id", "you/another-name", "--dry-run"])
    assert rc == 0 and state() == before and "README.md" not in before, err
    assert "README.md (the model card, written when pushing)" in out


class _EchoAuthorization:
    """A local "Hub" that answers every request 400 with the request's Authorization header in its error text."""

    def __enter__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def echo(self):
                body = json.dumps({"error": f"you sent Authorization: {self.headers.get('Authorization')}"}).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = echo

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("token_env", ["HF_TOKEN", "FOCUSNFIX_TEST_TOKEN"])
def test_push_never_prints_the_token(run, monkeypatch, capsys, token_env):
    """An endpoint that echoes the Authorization header into its error: neither the one-line error nor --debug's
    traceback shows the token (from HF_TOKEN or --token-env)."""
    import huggingface_hub

    secret = "hf_" + "S3cretT0ken" * 3
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv(token_env, secret)
    extra = [] if token_env == "HF_TOKEN" else ["--token-env", token_env]
    with _EchoAuthorization() as endpoint:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        for debug in ([], ["--debug"]):
            rc = main([*debug, "push", str(run), "--repo-id", "you/tiny-fnf", *extra])
            captured = capsys.readouterr()
            assert rc == 2 or rc == 1, captured.err
            assert "Authorization" in captured.err  # the echo did reach the output, redacted
            assert secret not in captured.err and secret not in captured.out and "S3cretT0ken" not in captured.err
            assert ("Traceback" in captured.err) == bool(debug)


# -- the card's honesty (issue 27): the widget's image, the sampler, the snippet's dtype and scheduler, sum masks ----
def _fake_run(folder: Path, **cfg) -> Path:
    """A run folder with only config.yaml (what build_card reads), for cards of families not trained here."""
    base = {"method": "fnf", "model": {"path": "CompVis/stable-diffusion-v1-4"}, "reward": {"name": "nsfw"},
            "mask": {"source": "heatmap", "threshold": 0.9, "dilate": 1}, "objective": {"lam": 1.0},
            "sampler": {"steps": 28, "guidance_scale": 4.5, "k": 1}, "lora": {"rank": 4}, "train": {"steps": 10},
            "data": {"prompts": ["a cat"]}}
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({**base, **cfg}))
    return folder


def test_widget_shows_the_fine_tuned_image_alone_not_the_grid(run):
    """The Hub widget's example output is Î of the grid's first row (its right-hand cell), not Î0 | M | Î."""
    from PIL import Image

    lora = run / "lora"
    meta = _card((lora / "README.md").read_text()).data.to_dict()
    assert meta["widget"] == [{"text": "a red circle", "output": {"url": "lora-sample.png"}}]
    with Image.open(lora / "samples.png") as grid, Image.open(lora / "lora-sample.png") as widget:
        # the grid: 3 cells of 32 px with 2 px padding = 104 px, upscaled x4 (to >= 384 px); row 0, column 2 is Î
        assert grid.width == 4 * (3 * 34 + 2) and widget.size == (4 * 32, 4 * 32)
        cell = grid.convert("RGB").crop((4 * (2 + 2 * 34), 4 * 2, 4 * (2 + 2 * 34) + 128, 4 * 2 + 128))
        assert widget.convert("RGB").tobytes() == cell.tobytes()


def test_a_grid_without_its_layout_gets_no_widget(run, tmp_path):
    """A grid saved before grids recorded their layout: the card shows it, but no widget claims it as the output."""
    from PIL import Image

    from focusnfix.runs.modelcard import write_model_card

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with Image.open(copy / "samples" / "final.png") as png:
        png.convert("RGB").save(copy / "samples" / "final.png")  # the same pixels, no text chunk
    out = tmp_path / "lora"
    out.mkdir()
    write_model_card(out, copy)
    assert (out / "samples.png").is_file() and not (out / "lora-sample.png").exists()
    assert "widget" not in _card((out / "README.md").read_text()).data.to_dict()


@pytest.mark.parametrize("model,pipeline", [("stabilityai/stable-diffusion-3.5-medium", "StableDiffusion3Pipeline"),
                                            ("black-forest-labs/FLUX.1-dev", "FluxPipeline")])
def test_flow_model_card_says_euler_and_bfloat16(tmp_path, model, pipeline):
    from focusnfix.runs.modelcard import build_card

    text = str(build_card(_fake_run(tmp_path / "run", model={"path": model}), pipeline=pipeline, load_id="you/x"))
    assert "| sampler | flow-matching Euler" in text and "DDIM" not in text
    assert f'{pipeline}.from_pretrained("{model}", torch_dtype=torch.bfloat16)' in text and "torch.float16" not in text
    assert "ComfyUI loads `pytorch_lora_weights.safetensors` as it is" in text


def test_sd_card_snippet_sets_the_scheduler_of_training(run, tiny_dir):
    """The snippet's scheduler line turns a base that ships another scheduler (SD 1.4 ships PNDM) into the sampler
    of training: the pipeline then makes focusnfix's images (same float32 model: <= 1e-4 as test_export_lora)."""
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline

    from focusnfix.backbones.loading import load_backbone
    from focusnfix.sampling import generate

    text = (run / "lora" / "README.md").read_text()
    assert "from diffusers import DDIMScheduler, StableDiffusionPipeline" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("pipe.scheduler = "))
    prompts, seeds = ["a red circle", "a blue square"], [3, 4]
    backbone = load_backbone(str(tiny_dir))
    ours = generate(backbone, prompts, seeds, steps=6, guidance_scale=5.0)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)  # what the base ships
    kw = dict(num_inference_steps=6, guidance_scale=5.0, latents=backbone.initial_noise(seeds), output_type="pt")
    shipped = pipe(prompts, **kw).images
    exec(line, {"pipe": pipe, "DDIMScheduler": DDIMScheduler})
    assert (pipe(prompts, **kw).images - ours).abs().max() <= 1e-4
    assert (shipped - ours).abs().max() > 1e-3  # without the line: other images


def test_sum_reward_card_describes_each_terms_own_mask(tmp_path):
    """A sum reward makes M(Î0) from each term's own mask settings (the top-level mask section is not used)."""
    from focusnfix.runs.modelcard import build_card

    reward = {"name": "sum", "args": {"combine": "union", "terms": [
        {"name": "nsfw", "weight": 1.0, "mask": {"source": "saliency", "threshold": 0.3, "dilate": 8}},
        {"name": "clip-score", "weight": 0.01, "mask": {"threshold": 0.6}}]}}
    text = str(build_card(_fake_run(tmp_path / "run", reward=reward), pipeline="StableDiffusionPipeline"))
    row = next(ln for ln in text.splitlines() if ln.startswith("| mask M(Î0) |"))
    assert "union of each term's own mask" in row
    assert "`nsfw`: gradient saliency of the reward, threshold 0.3, dilated 8 px" in row
    assert "`clip-score`: the reward's heatmap, else gradient saliency, threshold 0.6, dilated 2 px" in row
    assert "0.9" not in row  # the top-level mask section
    assert "| reward | `sum`: 1.0 × `nsfw` + 0.01 × `clip-score` |" in text
