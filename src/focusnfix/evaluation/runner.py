"""``focusnfix eval``: generate every method's images for identical (prompt, seed) pairs and measure
them against the base model, writing an eval folder that ``focusnfix report`` renders.

Methods (strings):
  ``base``                         the frozen model
  ``NAME=RUN`` or ``RUN``          a trained LoRA (a run folder with ``lora/``, or a LoRA folder)
  ``rg[:scale=S,start=A,end=B]``   Reward Guidance;  ``rg-region[:...]`` with the region constraint
  ``sld[:PRESET][,concept=TEXT]``  Safe Latent Diffusion (weak, medium, strong, max)
  ``NAME=rg:...``, ``NAME=sld:...``  the same under another name (several settings side by side)

All metrics are computed on the 8-bit images that are saved (what a user sees), so the base method
compared with itself gives exactly zero change.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..errors import FocusNFixError
from ..images import overlay, save_png
from ..prompts import PromptRecord
from .metrics import change_metrics

METRICS = {  # name -> (label, higher is better)
    "reward": ("target reward", True),
    "inside_mae": ("mean |change| vs base inside mask", False), "outside_mae": ("mean |change| vs base outside mask", False),
    "inside_mse": ("MSE vs base inside mask", False), "outside_mse": ("MSE vs base outside mask", False),
    "inside_psnr": ("PSNR vs base inside mask (dB)", True), "outside_psnr": ("PSNR vs base outside mask (dB)", True),
    "inside_ssim": ("SSIM vs base inside mask", True), "outside_ssim": ("SSIM vs base outside mask", True),
    "clip_score": ("CLIP score (100·cos)", True),
    "alignment": ("alignment-oracle accuracy (all attributes right)", True),
    "alignment_fraction": ("share of caption attributes right", True),
    "defect_artifact": ("artifact rate (defect judge)", False), "defect_unwanted": ("unwanted-element rate (defect judge)", False),
    "seconds": ("inference seconds per image", False),
}
ExtraMetric = Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]]


@dataclass
class MethodSpec:
    name: str
    kind: str  # base | lora | rg | rg-region | sld
    params: dict = field(default_factory=dict)
    path: Path | None = None


def parse_method(spec: str) -> MethodSpec:
    """Parse one method string (see the module docstring); ``NAME=rg:...`` / ``NAME=sld:...`` names
    an inference-time method (to compare several settings)."""
    named = re.match(r"^([\w.-]+)=((?:rg|rg-region|sld)(?::.*)?)$", spec)
    if named:
        parsed = parse_method(named.group(2))
        parsed.name = named.group(1)
        return parsed
    head, _, rest = spec.partition(":")
    if spec == "base":
        return MethodSpec("base", "base")
    if head in ("rg", "rg-region"):
        params = _kv(rest, spec, {"scale": float, "start": float, "end": float})
        return MethodSpec(head, head, {"scale": 1.0, "start": 0.0, "end": 1.0, **params})
    if head == "sld":
        preset, _, extra = rest.partition(",")
        if preset.startswith("concept="):
            preset, extra = "", preset
        from ..methods.sld import PRESETS

        preset = preset or "medium"
        if preset not in PRESETS:
            raise FocusNFixError(f"unknown SLD preset in {spec!r}; valid: {', '.join(PRESETS)}")
        return MethodSpec(f"sld-{preset}", "sld", {"preset": preset, **_kv(extra, spec, {"concept": str})})
    name, _, path = spec.rpartition("=")
    folder = Path(path)
    lora = folder / "lora" if (folder / "lora").is_dir() else folder
    if not (lora / "pytorch_lora_weights.safetensors").is_file():
        raise FocusNFixError(f"method {spec!r}: {path!r} is neither a run folder with lora/ nor a LoRA folder "
                             "(valid methods: base, NAME=RUN_DIR, rg[:scale=S], rg-region[:scale=S], sld[:preset])")
    return MethodSpec(name or folder.name, "lora", {}, folder)


def _kv(text: str, spec: str, types: dict) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in types:
            raise FocusNFixError(f"method {spec!r}: bad option {item!r}; valid options: {', '.join(types)}")
        try:
            out[key] = types[key](value)
        except ValueError:
            raise FocusNFixError(f"method {spec!r}: {key} must be a {types[key].__name__}, got {value!r}") from None
    return out


def _guidance(spec: MethodSpec, backbone, reward, prompts, masks, steps):
    if spec.kind in ("rg", "rg-region"):
        from ..methods.reward_guidance import RewardGuidance

        p = spec.params
        return RewardGuidance(backbone, reward, prompts, p["scale"], p["start"], p["end"], steps,
                              mask=masks if spec.kind == "rg-region" else None)
    if spec.kind == "sld":
        from ..methods.sld import DEFAULT_CONCEPT, SLDGuidance

        return SLDGuidance(backbone, spec.params["preset"], spec.params.get("concept", DEFAULT_CONCEPT))
    return None


def _load_png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def _finite(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else float(x)


class Evaluation:
    """One eval: a config (model, sampler, reward, mask), methods, and (prompt, category, seed) jobs."""

    def __init__(self, cfg, methods: list[str], records: list[PromptRecord], seeds: list[int] | None,
                 out: str | Path, batch_size: int = 4, clip_model: str | None = None,
                 extra_metrics: list[ExtraMetric] = (), progress: bool = True):
        from ..backbones import load_backbone
        from ..registry import build_reward

        self.specs = [parse_method(m) for m in methods]
        if not self.specs or self.specs[0].kind != "base":
            self.specs.insert(0, MethodSpec("base", "base"))
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise FocusNFixError(f"method names must be unique, got {names}; name them with NAME=RUN_DIR")
        self.jobs = [(r.prompt, r.category, s) for r in records for s in (seeds or [r.seed if r.seed is not None else 0])]
        if not self.jobs:
            raise FocusNFixError("no (prompt, seed) pairs to evaluate; give prompts and --seeds")
        self.cfg, self.out, self.batch, self.progress = cfg, Path(out), batch_size, progress
        m = cfg.model
        self.backbone = load_backbone(m.path, m.dtype, m.revision, m.resolution, attention=m.attention)
        self.reward = build_reward(cfg.reward.name, **cfg.reward.args)
        self.clip = build_reward("clip-score", model=clip_model, heatmap="never") if clip_model else None
        self.extra_metrics = list(extra_metrics)
        self.masks: list[torch.Tensor] = []  # M(Î0) per batch, (b,1,H,W)

    def batches(self):
        for start in range(0, len(self.jobs), self.batch):
            yield start, self.jobs[start: start + self.batch]

    def generate(self, spec: MethodSpec, tmp: Path) -> list[float]:
        """Write ``images/<method>/<i>.png`` for every job; return seconds per image per batch."""
        from ..lora import load_lora_into
        from ..sampling import generate

        s, pipe, seconds = self.cfg.sampler, self.backbone.pipe, []
        if spec.kind == "lora":
            load_lora_into(pipe, spec.path / "lora" if (spec.path / "lora").is_dir() else spec.path)
        try:
            for b, (start, jobs) in enumerate(tqdm(list(self.batches()), desc=f"eval {spec.name}", disable=not self.progress)):
                prompts, seeds = [j[0] for j in jobs], [j[2] for j in jobs]
                masks = self.masks[b] if spec.kind == "rg-region" else None  # M(Î0) from the finished base pass
                guidance = _guidance(spec, self.backbone, self.reward, prompts, masks, s.steps)
                t0 = time.perf_counter()
                images = generate(self.backbone, prompts, seeds, s.steps, s.guidance_scale, s.negative_prompt, guidance)
                seconds += [(time.perf_counter() - t0) / len(jobs)] * len(jobs)
                for i, image in enumerate(images):
                    save_png(image, tmp / "images" / spec.name / f"{start + i:05d}.png")
                if spec.kind == "base":
                    self._base_masks(start, prompts, tmp)
        finally:
            if spec.kind == "lora":
                pipe.unload_lora_weights()
        return seconds

    def _base_masks(self, start: int, prompts: list[str], tmp: Path) -> None:
        """M(Î0) and its map from the saved base images, kept for rg-region and the metrics."""
        from ..methods import FocusNFix

        base = torch.stack([_load_png(tmp / "images" / "base" / f"{start + i:05d}.png") for i in range(len(prompts))])
        mask, heat = FocusNFix(self.backbone, self.reward, self.cfg).mask(base, prompts)
        self.masks.append(mask.detach().cpu())
        for i in range(len(prompts)):
            save_png(overlay(base[i: i + 1], mask[i: i + 1])[0], tmp / "masks" / f"{start + i:05d}.png")
            save_png(heat[i].expand(3, -1, -1), tmp / "heatmaps" / f"{start + i:05d}.png")

    def measure(self, spec: MethodSpec, seconds: list[float], tmp: Path) -> list[dict]:
        """Per-sample metrics of one method against the base images."""
        rows = []
        for b, (start, jobs) in enumerate(self.batches()):
            prompts = [j[0] for j in jobs]
            load = lambda m: torch.stack([_load_png(tmp / "images" / m / f"{start + i:05d}.png") for i in range(len(jobs))])  # noqa: E731
            images, base = load(spec.name), load("base")
            with torch.no_grad():
                values = {"reward": self.reward(images, prompts).score, **change_metrics(images, base, self.masks[b])}
                if self.clip is not None:
                    values["clip_score"] = self.clip(images, prompts).score
                for fn in self.extra_metrics:
                    values.update(fn(images, prompts))
            for i, (prompt, category, seed) in enumerate(jobs):
                n = start + i
                row = {"i": n, "prompt": prompt, "category": category, "seed": seed, "method": spec.name,
                       "image": f"images/{spec.name}/{n:05d}.png", "mask": f"masks/{n:05d}.png",
                       "heatmap": f"heatmaps/{n:05d}.png", "seconds": seconds[n]}
                for key, value in values.items():
                    v = float(value[i])
                    row[key] = _finite(v)
                    if math.isinf(v):
                        row[f"{key}_inf"] = True
                rows.append(row)
        return rows

    def run(self, overwrite: bool = False) -> Path:
        """Generate, measure and write the eval folder atomically (a temporary folder renamed at the end)."""
        if self.out.exists() and any(self.out.iterdir()) and not overwrite:
            raise FocusNFixError(f"eval folder {str(self.out)!r} exists and is not empty; choose another --out or pass --overwrite")
        tmp = self.out.with_name(f".tmp-{self.out.name}-{os.getpid()}")  # per process: concurrent evals don't collide
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            rows = []
            for spec in self.specs:
                rows += self.measure(spec, self.generate(spec, tmp), tmp)
                if spec.kind == "lora" and (spec.path / "metrics.jsonl").is_file():
                    (tmp / "curves").mkdir(exist_ok=True)
                    shutil.copy(spec.path / "metrics.jsonl", tmp / "curves" / f"{spec.name}.jsonl")
            self._write(tmp, rows)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.out.exists():
            shutil.rmtree(self.out)
        tmp.rename(self.out)
        return self.out

    def _write(self, tmp: Path, rows: list[dict]) -> None:
        present = {k for r in rows for k in r}
        metrics = {k: {"label": v[0], "higher_is_better": v[1]} for k, v in METRICS.items() if k in present}
        for k in sorted(present - set(METRICS) - {"i", "prompt", "category", "seed", "method", "image", "mask", "heatmap"}):
            if not k.endswith("_inf"):
                metrics[k] = {"label": k.replace("_", " "), "higher_is_better": True}  # extra metrics are rewards
        meta = {"title": f"{self.cfg.reward.name} on {self.cfg.model.path}", "model": self.cfg.model.path,
                "reward": self.cfg.reward.name, "methods": [s.name for s in self.specs], "reference": "base",
                "prompt_set": getattr(self, "prompt_set", ""), "seeds": sorted({j[2] for j in self.jobs}),
                "metrics": metrics, "sampler": {"steps": self.cfg.sampler.steps, "guidance_scale": self.cfg.sampler.guidance_scale},
                "method_specs": {s.name: {"kind": s.kind, **s.params, "path": str(s.path) if s.path else None} for s in self.specs}}
        (tmp / "eval.json").write_text(json.dumps(meta, indent=1))
        (tmp / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def method_means(eval_dir: str | Path, metrics: list[str]) -> dict[str, dict[str, float]]:
    """Per method (in eval order), the mean of each metric over the samples that have a finite value."""
    from ..report.eval_tables import mean_of
    from ..report.page import read_jsonl

    rows = read_jsonl(Path(eval_dir) / "samples.jsonl")
    out: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        means = {k: mean_of(mine, k) for k in metrics}
        out[method] = {k: mean for k, (mean, n, _) in means.items() if n}
    return out
