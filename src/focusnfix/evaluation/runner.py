"""``focusnfix eval``: generate every method's images for identical (prompt, seed) pairs and measure
them against the base model, writing an eval folder that ``focusnfix report`` renders.

Methods are strings (``base``, ``NAME=RUN_DIR``, ``rg:...``, ``rg-region:...``, ``sld:...``; see
:mod:`focusnfix.evaluation.specs`). Generation, masks, rewards, metrics and judges run on one device
(``auto``: the GPU when there is one). Images are written as they are made and only one batch is held
in memory; an interrupted eval resumes from its finished images (:mod:`focusnfix.evaluation.workdir`).

All metrics are computed on the 8-bit images that are saved (what a user sees), so the base method
compared with itself gives exactly zero change.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..runs.checkpoint import fault_point
from ..runs.files import read_jsonl
from ..runs.locking import check_not_rated
from ..devices import peak_memory_mb, reset_peak_memory, resolve_device, synchronize
from ..errors import FocusNFixError, short_path
from ..images import overlay, save_png
from ..prompts import PromptRecord
from ..rewards.base import call_reward
from .judges import judge_summary
from .metrics import change_metrics
from .specs import MethodSpec, build_guidance, parse_method
from .stats import mean_of
from .workdir import WorkDir

__all__ = ["Evaluation", "MethodSpec", "parse_method", "method_means", "METRICS"]

METRICS = {  # name -> (label, higher is better)
    "reward": ("target reward", True),
    "inside_mae": ("mean |change| vs base inside mask", False),
    "outside_mae": ("mean |change| vs base outside mask", False),
    "inside_mse": ("MSE vs base inside mask", False), "outside_mse": ("MSE vs base outside mask", False),
    "inside_psnr": ("PSNR vs base inside mask (dB)", True), "outside_psnr": ("PSNR vs base outside mask (dB)", True),
    "inside_ssim": ("SSIM vs base inside mask", True), "outside_ssim": ("SSIM vs base outside mask", True),
    "outside_grey": ("mean |change| vs base outside mask (8-bit grey levels)", False),
    "collateral_35": ("collateral rate: share of images with PSNR outside mask < 35 dB", False),
    "collateral_30": ("collateral rate: share of images with PSNR outside mask < 30 dB", False),
    "clip_score": ("CLIP score (100·cos)", True),
    "alignment": ("alignment-oracle accuracy (all attributes right)", True),
    "alignment_fraction": ("share of caption attributes right", True),
    "defect_artifact": ("artifact rate (defect judge)", False),
    "defect_unwanted": ("unwanted-element rate (defect judge)", False),
    "seconds": ("inference seconds per image", False),
}
ExtraMetric = Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]]


def _load_png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def _finite(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else float(x)


class Evaluation:
    """One eval: a config (model, sampler, reward, mask), methods, and (prompt, category, seed) jobs.

    ``device``: ``auto`` (default: the GPU when there is one), ``cpu``, ``cuda[:N]``; the model's dtype
    is ``cfg.model.dtype`` and its image size ``cfg.sampler.height/width`` (else ``cfg.model.resolution``).
    """

    def __init__(self, cfg, methods: list[str], records: list[PromptRecord], seeds: list[int] | None,
                 out: str | Path, batch_size: int = 4, clip_model: str | None = None,
                 extra_metrics: list[ExtraMetric] = (), progress: bool = True, device: str | torch.device = "auto"):
        from ..backbones import load_backbone
        from ..rewards.registry import build_reward

        self.specs = [parse_method(m) for m in methods]
        if not self.specs or self.specs[0].kind != "base":
            self.specs.insert(0, MethodSpec("base", "base"))
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise FocusNFixError(f"method names must be unique, got {names}; "
                                 "name them with NAME=RUN_DIR or NAME=sld:...")
        self.jobs = [(r.prompt, r.category, s) for r in records
                     for s in (seeds or [r.seed if r.seed is not None else 0])]
        if not self.jobs:
            raise FocusNFixError("no (prompt, seed) pairs to evaluate; give prompts and --seeds")
        if batch_size < 1:
            raise FocusNFixError(f"--batch-size must be >= 1, got {batch_size}")
        self.cfg, self.out, self.batch, self.progress = cfg, Path(out), batch_size, progress
        self.device = resolve_device(device)
        m = cfg.model
        self.backbone = load_backbone(m.path, m.dtype, m.revision, m.resolution, device=self.device,
                                      attention=m.attention, height=cfg.sampler.height, width=cfg.sampler.width)
        self.reward = build_reward(cfg.reward.name, **cfg.reward.args)  # rewards follow the images' device
        self.clip = build_reward("clip-score", model=clip_model, heatmap="never") if clip_model else None
        self.extra_metrics = list(extra_metrics)
        self.timing = {"generate_s": 0.0, "measure_s": 0.0, "generated": 0, "reused": 0}

    def batches(self):
        """``(start, jobs)`` chunks of ``batch_size``: the fixed grid every pass uses."""
        for start in range(0, len(self.jobs), self.batch):
            yield start, self.jobs[start: start + self.batch]

    # -- generation ---------------------------------------------------------------------------
    def generate(self, spec: MethodSpec, work: WorkDir) -> dict[int, float | None]:
        """Write ``images/<method>/<i>.png`` for every job not finished yet; return seconds per image by job index
        (None for the untimed warm-up batch that starts each pass)."""
        from ..backbones.lora import load_lora_into
        from ..sampling import generate

        key = self.method_key(spec)
        seconds = work.done(key)
        pending = [(start, [start + j for j in range(len(jobs)) if start + j not in seconds])
                   for start, jobs in self.batches()]
        pending = [(start, idx) for start, idx in pending if idx]
        self.timing["reused"] += len(seconds)
        if not pending:
            return seconds
        s, pipe = self.cfg.sampler, self.backbone.pipe
        if spec.kind == "lora":
            load_lora_into(pipe, spec.path)
        try:
            for n_batch, (start, idx) in enumerate(tqdm(pending, desc=f"eval {spec.name}", disable=not self.progress)):
                prompts, seeds = [self.jobs[i][0] for i in idx], [self.jobs[i][2] for i in idx]
                # M(Î0) of the base pass
                masks = work.load_masks(idx).to(self.device) if spec.kind == "rg-region" else None
                guidance = build_guidance(spec, self.backbone, self.reward, prompts, masks, s.steps)
                synchronize(self.device)
                t0 = time.perf_counter()
                images = generate(self.backbone, prompts, seeds, s.steps, s.guidance_scale, s.negative_prompt, guidance)
                synchronize(self.device)
                elapsed = time.perf_counter() - t0
                self.timing["generate_s"] += elapsed
                # the first batch of each pass is a warm-up (kernel selection, caches, LoRA layers): not timed,
                # so a method timed first is not charged for a cold start; its images get seconds = None
                per_image = elapsed / len(idx) if n_batch else None
                self.timing["generated"] += len(idx)
                images = images.cpu()
                for i, image in zip(idx, images):
                    save_png(image, work.root / "images" / spec.name / f"{i:05d}.png")
                if spec.kind == "base":
                    self._base_masks(idx, prompts, work)
                work.commit(key, idx, [per_image] * len(idx))
                fault_point("eval-batch", self.timing["generated"])  # crash tests only (FOCUSNFIX_FAULT)
                seconds.update({i: per_image for i in idx})
        finally:
            if spec.kind == "lora":
                pipe.unload_lora_weights()
        return seconds

    def _base_masks(self, idx: list[int], prompts: list[str], work: WorkDir) -> None:
        """M(Î0) and its map from the saved base images: masks kept on disk for rg-region and the metrics.
        A score-only reward without a heatmap (a yes/no judge) cannot say where the problem is: M = 0, so
        "outside the mask" is the whole image."""
        from ..rewards.compose import problem_mask

        base = self._load(work, "base", idx).to(self.device)
        mask = heat = None
        if not getattr(self.reward, "differentiable", True) and not hasattr(self.reward, "problem_mask"):
            with torch.no_grad():
                if call_reward(self.reward, base, prompts).heatmap is None:
                    mask = heat = torch.zeros_like(base[:, :1])
        if mask is None:
            mask, heat = problem_mask(self.reward, base, prompts, self.cfg.mask)
        mask, heat, base = mask.detach().cpu(), heat.detach().cpu(), base.cpu()
        work.save_masks(idx, mask)
        for j, i in enumerate(idx):
            save_png(overlay(base[j: j + 1], mask[j: j + 1])[0], work.root / "masks" / f"{i:05d}.png")
            save_png(heat[j].expand(3, -1, -1), work.root / "heatmaps" / f"{i:05d}.png")

    @staticmethod
    def _load(work: WorkDir, method: str, idx: list[int]) -> torch.Tensor:
        return torch.stack([_load_png(work.root / "images" / method / f"{i:05d}.png") for i in idx])

    # -- metrics ------------------------------------------------------------------------------
    def measure(self, spec: MethodSpec, seconds: dict[int, float], work: WorkDir) -> list[dict]:
        """Per-sample metrics of one method against the base images (always on the fixed batch grid,
        so a resumed eval measures exactly as an uninterrupted one)."""
        rows = []
        for start, jobs in self.batches():
            prompts, idx = [j[0] for j in jobs], list(range(start, start + len(jobs)))
            images, base = (self._load(work, spec.name, idx).to(self.device),
                            self._load(work, "base", idx).to(self.device))
            mask = work.load_masks(idx).to(self.device)
            with torch.no_grad():
                values = {"reward": call_reward(self.reward, images, prompts).score,
                          **change_metrics(images, base, mask)}
                if self.clip is not None:
                    values["clip_score"] = call_reward(self.clip, images, prompts).score
                for fn in self.extra_metrics:
                    values.update(fn(images, prompts))
            values = {k: v.detach().cpu() for k, v in values.items()}  # one transfer per metric and batch
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

    # -- the whole eval -----------------------------------------------------------------------
    def run(self, overwrite: bool = False) -> Path:
        """Generate, measure and write the eval folder; it appears under ``out`` only when complete.

        Work happens in ``.partial-<out>`` next to it; rerunning the same eval after an interruption
        skips the finished (method, prompt, seed) images. Per-sample rows (a few hundred bytes each)
        are the only thing kept for the whole run."""
        from ..runs.locking import FolderLock

        self.out.parent.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(self.out.with_name(f".{self.out.name}.lock"), "eval folder", self.out,
                          "another `focusnfix eval` is writing it: wait for it to finish or choose another --out")
        with lock:
            self._check_out(overwrite)
            return self._run(overwrite)

    def _check_out(self, overwrite: bool) -> None:
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())) and not overwrite:
            raise FocusNFixError(f"eval folder {short_path(self.out)} exists and is not empty; "
                                 "choose another --out or pass --overwrite")
        if overwrite:
            check_not_rated(self.out)  # a `focusnfix rate` server on it: its answers would go with the folder

    def _run(self, overwrite: bool) -> Path:
        t_start = time.perf_counter()
        reset_peak_memory(self.device)
        log = tqdm.write if self.progress else print
        with WorkDir(self.out, self.state(), log=log) as work:
            rows = []
            for spec in self.specs:
                seconds = self.generate(spec, work)
                t0 = time.perf_counter()
                rows += self.measure(spec, seconds, work)
                self.timing["measure_s"] += time.perf_counter() - t0
                if spec.kind == "lora" and (spec.path / "metrics.jsonl").is_file():
                    (work.root / "curves").mkdir(exist_ok=True)
                    shutil.copy(spec.path / "metrics.jsonl", work.root / "curves" / f"{spec.name}.jsonl")
            self.timing.update(wall_s=time.perf_counter() - t_start, peak_gpu_mb=peak_memory_mb(self.device))
            self._write(work.root, rows)
            self._check_out(overwrite)  # still ours to replace (the lock makes this hold; cheap to be sure)
            done = work.finish()
        if self.out.exists():
            shutil.rmtree(self.out) if self.out.is_dir() else self.out.unlink()
        done.rename(self.out)
        return self.out

    def state(self) -> dict:
        """What every image depends on besides its method (see :class:`WorkDir`)."""
        from ..config import to_dict

        c = to_dict(self.cfg)
        return {"model": c["model"], "sampler": c["sampler"], "reward": c["reward"], "mask": c["mask"],
                "device": self.device.type, "jobs": [list(j) for j in self.jobs]}

    @staticmethod
    def method_key(spec: MethodSpec) -> str:
        """A method's settings, including its LoRA file's size and modification time."""
        info = {"name": spec.name, "kind": spec.kind, "params": spec.params}
        if spec.kind == "lora":
            from ..backbones.lora import find_lora_file

            f = find_lora_file(spec.path)
            info["lora"] = [str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns]
        return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _write(self, root: Path, rows: list[dict]) -> None:
        present = {k for r in rows for k in r}
        metrics = {k: {"label": v[0], "higher_is_better": v[1]} for k, v in METRICS.items() if k in present}
        for k in sorted(present - set(METRICS)
                        - {"i", "prompt", "category", "seed", "method", "image", "mask", "heatmap"}):
            if not k.endswith("_inf"):
                metrics[k] = {"label": k.replace("_", " "), "higher_is_better": True}  # extra metrics are rewards
        for fn in self.extra_metrics:  # what an extra metric says about itself (the --judge metrics)
            metrics.update({k: v for k, v in getattr(fn, "metric_info", {}).items() if k in metrics})
        b = self.backbone
        runtime = {"device": str(self.device), "dtype": self.cfg.model.dtype, "batch_size": self.batch,
                   "height": b.height, "width": b.width,
                   **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.timing.items()}}
        meta = {"title": f"{self.cfg.reward.name} on {self.cfg.model.path}", "model": self.cfg.model.path,
                "reward": self.cfg.reward.name, "methods": [s.name for s in self.specs], "reference": "base",
                "prompt_set": getattr(self, "prompt_set", ""), "seeds": sorted({j[2] for j in self.jobs}),
                "metrics": metrics,
                "sampler": {"steps": self.cfg.sampler.steps, "guidance_scale": self.cfg.sampler.guidance_scale},
                "method_specs": {s.name: {"kind": s.kind, **s.params, "path": str(s.path) if s.path else None}
                                 for s in self.specs},
                "runtime": runtime}
        judges = judge_summary(rows, meta["methods"], "base", metrics)
        if judges:
            meta["judges"] = judges
        (root / "eval.json").write_text(json.dumps(meta, indent=1))
        (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))



def method_means(eval_dir: str | Path, metrics: list[str]) -> dict[str, dict[str, float]]:
    """Per method (in eval order), the mean of each metric over the samples that have a finite value."""
    rows = read_jsonl(Path(eval_dir) / "samples.jsonl")
    out: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        means = {k: mean_of(mine, k) for k in metrics}
        out[method] = {k: mean for k, (mean, n, _) in means.items() if n}
    return out
