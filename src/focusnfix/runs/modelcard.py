"""The model card (``lora/README.md``) of a run: Hub metadata (base model, license, tags) and what a
reader needs to use the LoRA (method, reward, lambda, K, steps, LoRA shape, sample grid, a diffusers
snippet, the paper). Built with huggingface_hub's :class:`~huggingface_hub.ModelCard` /
:class:`~huggingface_hub.ModelCardData` from the run folder alone (``config.yaml``, ``metrics.jsonl``,
``summary.json``, ``samples/``), so the trainer and ``focusnfix push`` write the same card.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from ..config.methods import METHODS as CATALOGUE
from ..images import grid_cell
from .card_rows import FLOW, method_rows, reward_text, sampler_name
from .checkpoint import atomic_write_text
from .kohya import SUFFIX as KOHYA_SUFFIX
from .metrics_log import read_metrics

CARD = "README.md"
SAMPLE = "samples.png"  # the run's latest sample grid, copied beside the weights
WIDGET = "lora-sample.png"  # the grid's first image Î alone: the Hub widget's example output of this LoRA
TAGS = ["focusnfix", "lora", "diffusers", "text-to-image"]
METHODS = {name: (e.title, e.tag, e.sentence) for name, e in CATALOGUE.items()}  # method -> (name, tag, sentence)
# licenses of the bases our shipped configs use (Hub license ids); any other base: "see the base model's license"
LICENSES = {
    "CompVis/stable-diffusion-v1-4": ("creativeml-openrail-m", None),
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ("creativeml-openrail-m", None),
    "runwayml/stable-diffusion-v1-5": ("creativeml-openrail-m", None),
    "stabilityai/stable-diffusion-xl-base-1.0": ("openrail++", None),
    "stabilityai/stable-diffusion-3.5-medium": ("other", "stabilityai-ai-community"),
    "black-forest-labs/FLUX.1-dev": ("other", "flux-1-dev-non-commercial-license"),
    "black-forest-labs/FLUX.1-schnell": ("apache-2.0", None),
}
BUILT_IN = {  # model.path -> (description, pipeline class, loading code)
    "world": ("focusnfix's built-in world model (a 64 px Stable-Diffusion-format model shipped in the focusnfix "
              "package)",
              "StableDiffusionPipeline", "from focusnfix.world import pipeline_path\n\n"
              "pipe = StableDiffusionPipeline.from_pretrained(pipeline_path(), local_files_only=True)"),
    "world-flow": ("focusnfix's built-in flow-matching world model (SD3 format, shipped in the focusnfix package)",
                   "StableDiffusion3Pipeline", "from focusnfix.world import flow_pipeline_path\n\n"
                   "pipe = StableDiffusion3Pipeline.from_pretrained(flow_pipeline_path(), text_encoder_3=None, "
                   "tokenizer_3=None, local_files_only=True)"),
    "tiny": ("focusnfix's tiny random test model (built in code)", "StableDiffusionPipeline",
             "from focusnfix.tiny import build_tiny_pipeline\n\npipe = build_tiny_pipeline()"),
}
CITATION = """@inproceedings{xing2025focusnfix,
  title     = {Focus-N-Fix: Region-Aware Fine-Tuning for Text-to-Image Generation},
  author    = {Xing, Xiaoying and Saha, Avinab and He, Junfeng and Hao, Susan and Vicol, Paul and Ryu, Moonkyung and
               Li, Gang and Singla, Sahil and Young, Sarah and Li, Yinxiao and Yang, Feng and Ramachandran, Deepak},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2025},
  eprint    = {2501.06481},
  archivePrefix = {arXiv}
}"""


def hub_model_id(path: str) -> str | None:
    """``path`` as a Hub model id (``owner/name``), or None for a local folder or a built-in model."""
    from huggingface_hub.utils import validate_repo_id

    if not path or path in BUILT_IN or "/" not in path or Path(path).expanduser().exists():
        return None
    try:
        validate_repo_id(path)
    except ValueError:  # HFValidationError
        return None
    return path


def pipeline_class(path: str, revision: str | None = None) -> str:
    """The diffusers pipeline class of a base model, from its ``model_index.json`` (a local folder, a
    built-in model or the Hub cache; no network); ``DiffusionPipeline`` when it is not known here."""
    if path in BUILT_IN:
        return BUILT_IN[path][1]
    index = Path(path).expanduser() / "model_index.json"
    if not index.is_file() and hub_model_id(path):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "model_index.json", revision=revision)
        index = Path(cached) if isinstance(cached, str) else index
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) and name.isidentifier() else "DiffusionPipeline"


def card_data(cfg: dict, base_model: str | None = None, sample_prompt: str | None = None):
    """The card's YAML metadata: base_model (a Hub id only), license, tags, library, pipeline tag."""
    from huggingface_hub import ModelCardData

    path = str(cfg.get("model", {}).get("path", ""))
    base = base_model or hub_model_id(path)
    license_id, license_name = ("apache-2.0", None) if path in BUILT_IN else LICENSES.get(base or "", ("other", None))
    extra = {"license_name": license_name} if license_name else {}
    if license_id == "other" and base:  # the base model's page states its license
        extra["license_link"] = f"https://huggingface.co/{base}"
    if sample_prompt is not None:  # the example output is Î alone, not the Î0 | M | Î grid
        extra["widget"] = [{"text": sample_prompt, "output": {"url": WIDGET}}]
    method = METHODS.get(cfg.get("method"), (None, None, None))[1]
    tags = TAGS + [t for t in (method, "template:sd-lora") if t]
    return ModelCardData(base_model=base, license=license_id, library_name="diffusers", pipeline_tag="text-to-image",
                         tags=tags, instance_prompt=None, **extra)


def build_card(run_dir: str | Path, steps: int | None = None, pipeline: str | None = None, reward: str | None = None,
               load_id: str | None = None, base_model: str | None = None, has_sample: bool = False,
               has_widget: bool = False, kohya: str | None = None):
    """A :class:`huggingface_hub.ModelCard` for the run in ``run_dir``. ``load_id``: what the snippet passes to
    ``load_lora_weights`` (a Hub repo id or a folder); ``base_model``: the Hub id of a base given as a local folder;
    ``has_sample`` / ``has_widget``: ``samples.png`` / ``lora-sample.png`` are beside the card; ``kohya``: the name
    of the kohya-format copy beside it (SD 1.x/2.x, SDXL)."""
    from huggingface_hub import ModelCard

    run = Path(run_dir)
    cfg = _read_yaml(run / "config.yaml")
    m, t, s, lo = (cfg.get(k, {}) for k in ("model", "train", "sampler", "lora"))
    path = str(m.get("path", ""))
    summary = read_json(run / "summary.json")
    steps = steps if steps is not None else summary.get("steps")
    pipeline = pipeline or pipeline_class(path, m.get("revision"))
    reward = reward or cfg.get("reward", {}).get("name", "?")
    name, _, sentence = METHODS.get(cfg.get("method"), (str(cfg.get("method")), None, "reward fine-tuning."))
    prompts = cfg.get("data", {}).get("sample_prompts") or cfg.get("data", {}).get("prompts") or []
    data = card_data(cfg, base_model, prompts[0] if has_widget and prompts else None)
    base = data.base_model or (path if path in BUILT_IN else Path(path).name)  # no local path in a public card
    base_text = (BUILT_IN[path][0] if path in BUILT_IN
                 else (f"[{base}](https://huggingface.co/{base})" if data.base_model
                       else f"`{base}` (a local folder)"))
    license_text = {"apache-2.0": "Apache-2.0"}.get(data.license) if path in BUILT_IN else None
    license_text = license_text or (f"`{data.license}`, the base model's" if base in LICENSES
                                    else "see the base model's license")
    rows = [("base model", base_text), ("method", f"{name} (`method: {cfg.get('method')}`)"),
            ("reward", reward_text(reward, cfg.get("reward", {}))),
            *method_rows(cfg), ("training steps", f"{steps if steps is not None else '?'} of {t.get('steps', '?')}"
                                 f" (batch {t.get('batch_size', '?')} × accumulation {t.get('grad_accum', '?')}, "
                                 f"lr {t.get('lr', '?')})"),
            ("sampler", f"{sampler_name(pipeline)}, T = {s.get('steps', '?')} steps, guidance scale "
                        f"{s.get('guidance_scale', '?')}"),
            ("LoRA", f"rank {lo.get('rank', '?')}, alpha {lo.get('alpha') or lo.get('rank', '?')}, targets "
                     f"{', '.join(lo.get('targets') or ['the family default (attention projections)'])}"
                     + ("; DoRA (a trained magnitude per output channel)" if lo.get("use_dora") else "")
                     + (f"; the weights are the moving average of training (EMA decay {t['ema']:g})"
                        if t.get("ema") else "")),
            ("license", license_text)]
    body = [f"# {name[:1].upper() + name[1:]} LoRA for {base}", "",
            f"A LoRA adapter for {base_text}, fine-tuned with focusnfix (an implementation of "
            f"[Focus-N-Fix](https://arxiv.org/abs/2501.06481) and its baselines) by {sentence}",
            "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "", *_metric_lines(run),
            *_sample_lines(has_sample, has_widget), "## Use", "",
            "No trigger word: the LoRA changes the model itself, so prompt as you would the base model.", "",
            "```python", *_snippet(path, base, pipeline, load_id or "path/to/lora", s), "```", "",
            "Fusing the LoRA makes inference cost exactly what the base model costs (no mask, no reward model).", "",
            *_tool_lines(pipeline, kohya),
            "## Limitations", "",
            f"Trained against one reward (`{reward}`): check prompt alignment and other aspects too, e.g. with "
            "`focusnfix eval`, before relying on it. The base model's use restrictions apply.", "",
            "## Citation", "", "```bibtex", CITATION, "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(lora_dir: str | Path, run_dir: str | Path, steps: int | None = None, pipeline: str | None = None,
                     reward: str | None = None, load_id: str | None = None, base_model: str | None = None) -> Path:
    """Copy the run's latest sample grid into ``lora_dir`` (``samples.png``), cut its first fine-tuned image Î
    out of it (``lora-sample.png``, the widget's example) and write ``lora_dir/README.md``."""
    lora_dir = Path(lora_dir)
    grid = latest_sample(run_dir)
    if grid is not None:
        shutil.copyfile(grid, lora_dir / f".{SAMPLE}.tmp")
        (lora_dir / f".{SAMPLE}.tmp").replace(lora_dir / SAMPLE)
    image = grid_cell(grid, 0, 2) if grid is not None else None  # row 0, column Î (None: a grid without layout)
    if image is not None:
        image.save(lora_dir / f".{WIDGET}.tmp", format="PNG")
        (lora_dir / f".{WIDGET}.tmp").replace(lora_dir / WIDGET)
    run = Path(run_dir)
    load_id = load_id or str((run if not run.is_absolute() else Path(run.name)) / "lora")  # no absolute local path
    kohya = next((p.name for p in sorted(lora_dir.glob(f"*{KOHYA_SUFFIX}"))), None)
    card = build_card(run, steps, pipeline, reward, load_id, base_model, grid is not None, image is not None, kohya)
    atomic_write_text(lora_dir / CARD, str(card))
    return lora_dir / CARD


def point_card_at(card_path: str | Path, repo_id: str) -> bool:
    """Make the usage snippet of a focusnfix card load ``repo_id`` (what ``focusnfix push`` uploads);
    False (file unchanged) when the card is not focusnfix's or has no such line (a card the user rewrote)."""
    import re

    from huggingface_hub import ModelCard

    path = Path(card_path)
    text = path.read_text(encoding="utf-8")
    try:
        ours = "focusnfix" in (ModelCard(text).data.tags or [])
    except ValueError:  # metadata that is not YAML: someone else's card
        return False
    if not ours:
        return False
    new, n = re.subn(r'pipe\.load_lora_weights\("[^"\n]*"\)', f"pipe.load_lora_weights({json.dumps(repo_id)})", text)
    if n and new != text:
        atomic_write_text(path, new)
    return bool(n)


def latest_sample(run_dir: str | Path) -> Path | None:
    """``samples/final.png``, else the newest ``samples/step-*.png``; None when the run has none."""
    samples = Path(run_dir) / "samples"
    if (samples / "final.png").is_file():
        return samples / "final.png"
    steps = sorted(samples.glob("step-*.png")) if samples.is_dir() else []
    return steps[-1] if steps else None


def _metric_lines(run: Path) -> list[str]:
    rows = [r for r in read_metrics(run / "metrics.jsonl") if isinstance(r.get("reward"), (int, float))]
    if not rows:
        return []
    lines = ["Training batches (not a held-out evaluation): " + _changes(rows, ("reward", "constraint",
                                                                            "outside_change", "lam")) + ".", ""]
    held_out = sorted({k for r in rows for k in r if k.startswith("eval/") and k != "eval/seconds"})
    if held_out:  # train.eval_every: the same held-out prompts and seeds at every evaluated step
        lines += ["Held-out prompts during training (`train.eval_every`): " + _changes(rows, held_out) + ".", ""]
    return lines


def _changes(rows: list[dict], keys) -> str:
    """``key first (step a) → last (step b)`` for each of ``keys`` the rows have (a budget's slack steps do not
    measure the change; the eval keys are on the evaluated steps only)."""
    parts = []
    for key in keys:
        having = [r for r in rows if isinstance(r.get(key), (int, float))]
        if having:
            first, last = having[0], having[-1]
            parts.append(f"{key} {first[key]:.4g} (step {first.get('step')})" if first is last else
                         f"{key} {first[key]:.4g} (step {first.get('step')}) → {last[key]:.4g} "
                         f"(step {last.get('step')})")
    return "; ".join(parts)


def _sample_lines(has_sample: bool, has_widget: bool = False) -> list[str]:
    if not has_sample:
        return []
    widget = ([f"The widget's example ({WIDGET}) is the first row's Î alone.", ""] if has_widget else [])
    return ["## Samples", "", "![Each row: the base model's image Î0 | the problem mask M(Î0) | the fine-tuned "
            "model's "
            f"image Î, same prompt and noise]({SAMPLE})", "",
            "Each row: the base model's image Î0, its problem mask M(Î0), and this LoRA's image Î for the same "
            "prompt and "
            "initial noise (the run's last sample grid).", "", *widget]


def _tool_lines(pipeline: str, kohya: str | None) -> list[str]:
    """Which file AUTOMATIC1111 / ComfyUI load (docs/sharing.md)."""
    if kohya:
        return [f"AUTOMATIC1111/Forge and ComfyUI: use `{kohya}` (kohya format, the same weights and scale) from "
                "their LoRA folder (`models/Lora`, `models/loras`).", ""]
    if pipeline.startswith(FLOW):
        return ["ComfyUI loads `pytorch_lora_weights.safetensors` as it is (diffusers `transformer.*` names); it "
                "applies scale 1, so with alpha ≠ rank set the LoRA strength to alpha / rank.", ""]
    return []


def _snippet(path: str, base: str, pipeline: str, load_id: str, sampler: dict) -> list[str]:
    flow, unet = pipeline.startswith(FLOW), pipeline.startswith("StableDiffusion") and not pipeline.startswith(FLOW)
    classes = ", ".join(["DDIMScheduler"] * (not flow) + [pipeline])
    if path in BUILT_IN:
        load = BUILT_IN[path][2].splitlines()
        imports = [f"from diffusers import {classes}", *load[:1]]
        load = load[2:]
    else:  # SD3 and FLUX run in bfloat16 (float16 overflows them); SD 1.x/2.x/SDXL in float16
        imports = ["import torch", f"from diffusers import {classes}"]
        where = json.dumps(base if hub_model_id(base) else f"path/to/{base}")  # a local base: its folder
        dtype = "float16" if unet else "bfloat16"
        load = [f"pipe = {pipeline}.from_pretrained({where}, torch_dtype=torch.{dtype}).to(\"cuda\")"]
    ddim = "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, steps_offset=1)"
    if unet:  # the sampler it was trained with: deterministic DDIM (eta = 0, the pipeline's default)
        load.append(f"{ddim}  # the sampler of training: DDIM, eta = 0")
    elif not flow:
        load.append(f"# SD 1.x/2.x/SDXL bases: {ddim}  # the sampler of training")
    return [*imports, "", *load, f"pipe.load_lora_weights({json.dumps(load_id)})", "pipe.fuse_lora()  # optional",
            f"image = pipe(\"your prompt\", num_inference_steps={sampler.get('steps', 20)}, "
            f"guidance_scale={sampler.get('guidance_scale', 7.5)}).images[0]"]


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
