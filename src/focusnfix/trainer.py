"""Training loop on accelerate: AdamW on the LoRA parameters only, LR schedule, accumulation,
clipping, mixed precision, metrics, sample grids and atomic, resumable checkpoints.

All randomness of a step (prompt choice, noise seeds, K) is derived from ``(train.seed, step)``, so a resumed run continues exactly the same trajectory.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import load_backbone
from .checkpoint import (atomic_dir, atomic_write_text, fault_point, latest_checkpoint, load_training_state, optimizer_files,
                         prune_checkpoints, read_lora, save_checkpoint)
from .config import Config, save_config
from .errors import FocusNFixError, TrainingDiverged
from .images import save_preview_grid
from .lora import add_lora, load_lora_state, lora_parameters, lora_state, save_lora
from .methods import METHODS, Batch
from .prompts import resolve_prompts
from .registry import build_reward
from .sampling import draw_k
from .sharding import full, local


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the base LR at a given optimizer step."""
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return fn


def make_batches(cfg: Config, prompts: list[str], step: int, rank: int = 0, world: int = 1) -> list[Batch]:
    """This process's ``grad_accum`` micro-batches of optimizer step ``step``, deterministic in ``train.seed``.

    All ``batch_size * grad_accum * world`` trajectories of the step are drawn at once and share one
    K; rank r takes its contiguous share. So (batch b, accumulation a, world w) sees the same
    trajectories as (batch b, accumulation a*w, one process) and as (batch b*a, accumulation 1).
    """
    t = cfg.train
    n = t.batch_size * t.grad_accum * world
    rng = np.random.default_rng([t.seed, step])
    idx = rng.integers(0, len(prompts), size=n)
    seeds = rng.integers(0, cfg.data.seed_pool or 2**31 - 1, size=n)
    k = draw_k(cfg.sampler.k, cfg.sampler.k_max, torch.Generator().manual_seed(int(rng.integers(0, 2**31 - 1))))
    mine = range(rank * t.batch_size * t.grad_accum, (rank + 1) * t.batch_size * t.grad_accum, t.batch_size)
    return [Batch(prompts=[prompts[i] for i in idx[j: j + t.batch_size]], seeds=[int(s) for s in seeds[j: j + t.batch_size]], k=k)
            for j in mine]


def check_output_dir(out: Path, resume: bool) -> None:
    """Fail early (before anything is written) on an unusable run folder."""
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise FocusNFixError(f"train.output_dir {str(out)!r}: {str(blocker)!r} is a file; choose a folder")
    if out.exists() and not resume and (out / "checkpoints").exists():
        raise FocusNFixError(f"run folder {str(out)!r} already holds a run; pass --resume or choose another train.output_dir")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise FocusNFixError(f"cannot write to {str(parent)!r}; choose a writable train.output_dir")


class Trainer:
    """Builds backbone, LoRA, reward and method from a :class:`Config` and trains.

    ``reward`` may be passed as an object to bypass the registry (Python API).
    """

    def __init__(self, cfg: Config, reward=None, backbone=None):
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        self.prompts = resolve_prompts(cfg.data.prompts, cfg.data.prompt_file, cfg.data.prompt_set)
        self.accelerator = _accelerator(cfg.train.cpu)
        launched = self.accelerator.mixed_precision  # from an accelerate config / --mixed_precision
        if launched != "no" and launched != cfg.train.mixed_precision and self.accelerator.is_main_process:
            warnings.warn(f"accelerate's mixed_precision={launched} is not used; precision is train.mixed_precision="
                          f"{cfg.train.mixed_precision} (set train.mixed_precision={launched} to use it)", stacklevel=2)
        set_seed(cfg.train.seed)
        if cfg.train.tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        m = cfg.model
        self.backbone = backbone or load_backbone(m.path, m.dtype, m.revision, m.resolution, attention=m.attention,
                                                  height=cfg.sampler.height, width=cfg.sampler.width)
        if m.offload_text_encoders:
            if not hasattr(self.backbone, "offload_text_encoders"):
                raise FocusNFixError("model.offload_text_encoders is for the SD3 and FLUX families; this model's text "
                                     "encoders are small: remove the setting")
            self.backbone.offload_text_encoders = True
        self.backbone.to(self.accelerator.device)
        self.backbone.cache_conditioning = True  # the text encoders are frozen during training
        self.reward = reward if reward is not None else build_reward(cfg.reward.name, **cfg.reward.args)
        self.lora_targets = list(cfg.lora.targets or self.backbone.lora_targets)  # default: the family's
        add_lora(self.backbone.unet, cfg.lora.rank, cfg.lora.alpha, self.lora_targets, cfg.lora.dropout)
        self.method = METHODS[cfg.method](self.backbone, self.reward, cfg)
        if cfg.train.reference_cache != "off" and self.method.needs_reference:
            from .cache import ReferenceCache, reference_fingerprint

            folder = None if cfg.train.reference_cache == "memory" else cfg.train.reference_cache
            self.method.cache = ReferenceCache(reference_fingerprint(self.backbone, self.reward, cfg), folder,
                                               cfg.train.reference_cache_items)  # reads whole weights: before sharding
        self.sharded = self._shard()
        if self.sharded:
            self.method.lockstep = self._any_rank
        if m.compile:  # after add_lora and sharding, so the compiled forward includes both
            from .compile import compile_unet

            compile_unet(self.backbone.unet)
            self.method.batch_reference = False  # its per-row hooks are invisible to the compiled graph
        self.params = list(lora_parameters(self.backbone.unet).values())  # after sharding: the sharded ones
        t = cfg.train
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(t.lr_schedule, t.warmup_steps, t.steps))
        # Not accelerate.prepare(): its scheduler steps once per process per step, and its fp16 scaler
        # and autocast are skipped on CPU. Precision is owned here (fp32 LoRA, autocast, GradScaler).
        self.scaler = torch.amp.GradScaler(self.accelerator.device.type, enabled=t.mixed_precision == "fp16")
        self.step, self.bad_steps = 0, 0

    def _shard(self) -> bool:
        """FSDP (``train.fsdp`` or an accelerate FSDP config): shard the frozen UNet over the ranks."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        plugin = getattr(acc.state, "fsdp_plugin", None)
        if not (self.cfg.train.fsdp or acc.distributed_type == DistributedType.FSDP) or acc.num_processes == 1:
            return False
        from .sharding import reshard_after_forward, shard_unet

        if self.cfg.train.mixed_precision == "fp16":
            raise FocusNFixError("train.mixed_precision=fp16 is not supported with FSDP (its loss scaler does not handle sharded "
                                 "gradients); use train.mixed_precision=bf16")
        shard_unet(self.backbone.unet, acc.device, acc.num_processes, reshard_after_forward(plugin))
        return True

    def _any_rank(self, flag: bool) -> bool:
        """True if ``flag`` holds on any rank (a collective: every rank calls it)."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    # -- state ----------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Restore the newest complete checkpoint; False if there is none. Leftovers of a write
        interrupted by a crash (``.tmp-*`` folders) are removed."""
        if self.accelerator.is_main_process:
            for leftover in (self.out / "checkpoints").glob(".tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        ckpt = latest_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            return False
        load_lora_state(self.backbone.unet, read_lora(ckpt))  # checks the LoRA fits before the optimizer
        state = load_training_state(ckpt, self.optimizer, self.scheduler)
        self.step = state["step"]
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        _truncate_metrics(self.out / "metrics.jsonl", self.step)
        return True

    def _needs_state(self) -> bool:
        """Whether this rank must read the LoRA / optimizer state: the main process writes it, and a
        sharded state is gathered by every rank (a collective)."""
        return self.sharded or self.accelerator.is_main_process

    def save_checkpoint(self, lora: dict[str, torch.Tensor] | None = None) -> Path:
        """Main process writes the state atomically; all ranks wait for it. ``lora``: an already
        gathered :func:`lora_state`."""
        folder = self.out / "checkpoints" / f"step-{self.step:06d}"
        if self._needs_state():
            lora = lora if lora is not None else lora_state(self.backbone.unet)
            optimizer = optimizer_files(self.optimizer)
        if self.accelerator.is_main_process:
            save_checkpoint(folder, self.step, lora, optimizer, self.scheduler, extra={"scaler": self.scaler.state_dict()})
            prune_checkpoints(self.out / "checkpoints", self.cfg.train.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return folder

    # -- one optimizer step ---------------------------------------------------------------------
    def accumulate_gradients(self) -> dict[str, float]:
        """Forward and backward of this rank's micro-batches of the current step: the (loss-scaled) LoRA
        gradients are summed in ``p.grad``; returns the logs averaged over the micro-batches.

        The step's random numbers (LoRA dropout, the only consumer of torch's global generator in a
        step) come from a generator reseeded from ``(train.seed, step, rank)``, so a resumed run draws
        the same ones; the checkpoint's step number is that generator's whole state."""
        t, acc = self.cfg.train, self.accelerator
        torch.manual_seed(t.seed * 1_000_003 + self.step * 1_009 + acc.process_index)
        totals: dict[str, float] = {}
        for batch in make_batches(self.cfg, self.prompts, self.step, acc.process_index, acc.num_processes):
            with self.autocast():
                loss, logs = self.method.loss(batch)
            if torch.isfinite(loss) or self.sharded:  # FSDP: every rank joins backward's reduce-scatter
                self.scaler.scale(loss / t.grad_accum).backward()
            else:
                totals["nonfinite"] = 1.0
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + value / t.grad_accum
        return totals

    def train_step(self) -> dict[str, float]:
        """Accumulate this rank's micro-batches, average gradients over ranks, step (or skip if non-finite)."""
        t = self.cfg.train
        totals = self.accumulate_gradients()
        losses_ok, grads_ok = self._average_gradients(totals.pop("nonfinite", 0.0))
        totals = self._average_logs(totals)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.unscale_(self.optimizer)  # fp16: every rank unscales the same averaged gradients
        finite = losses_ok and grads_ok
        if finite:
            norm = torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
            grad_norm = float(full(norm))
            self.scaler.step(self.optimizer)  # = optimizer.step() without fp16
            self.bad_steps = 0
        else:
            grad_norm = float("nan")
            overflow = scale is not None and losses_ok and scale > 1.0  # fp16 overflow: the scaler backs off; not a bad step
            self.bad_steps += not overflow
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the schedule is a function of the step, skipped or not
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        self.step += 1
        fault_point("after-step", self.step)
        if self.bad_steps >= t.max_bad_steps:
            raise TrainingDiverged(f"{self.bad_steps} consecutive steps had a non-finite loss or gradient (last: step {self.step}); "
                                   "the last good checkpoint is intact: lower train.lr or check the reward, then --resume")
        logs = {**totals, "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0], "skipped": float(not finite)}
        return logs if scale is None else {**logs, "loss_scale": scale}

    def autocast(self):
        """``train.mixed_precision``: fp16/bf16 autocast of the forward passes (LoRA parameters stay float32)."""
        mp = self.cfg.train.mixed_precision
        return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16 if mp == "bf16" else torch.float16, enabled=mp != "no")

    def _average_gradients(self, nonfinite: float) -> tuple[bool, bool]:
        """Data parallel: mean of the LoRA gradients over ranks (one all-reduce).

        Returns (every rank's loss was finite, every averaged gradient is finite). Sharded (FSDP),
        the gradients arrive averaged (reduce-scatter); only the two checks span the ranks."""
        acc = self.accelerator
        if self.sharded:
            bad_grad = not all(bool(torch.isfinite(local(p.grad)).all()) for p in self.params if p.grad is not None)
            flags = acc.reduce(torch.tensor([nonfinite, float(bad_grad)], device=acc.device), reduction="sum")
            return float(flags[0]) == 0.0, float(flags[1]) == 0.0
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if acc.num_processes == 1:
            return nonfinite == 0.0, all(bool(torch.isfinite(g).all()) for g in grads)
        flat = torch.cat([g.flatten() for g in grads] + [torch.tensor([nonfinite], device=grads[0].device)])
        flat = acc.reduce(flat, reduction="mean")
        offset = 0
        for p, g in zip(self.params, grads):
            p.grad = flat[offset: offset + g.numel()].view_as(g).clone()
            offset += g.numel()
        return float(flat[-1]) == 0.0, bool(torch.isfinite(flat[:-1]).all())

    def _average_logs(self, logs: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1 or not logs:
            return logs
        keys = sorted(logs)
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        values = self.accelerator.reduce(values, reduction="mean")
        return dict(zip(keys, values.tolist()))

    # -- the loop ---------------------------------------------------------------------------------
    def sample_grid(self, name: str) -> Path | None:
        """Save rows of I0 | mask | I for the sample prompts and seeds (main process writes; sharded,
        every rank runs the model)."""
        if not (self.accelerator.is_main_process or self.sharded):
            return None
        d = self.cfg.data
        prompts = d.sample_prompts or self.prompts[:4]
        pairs = [(p, s) for p in prompts for s in d.sample_seeds]
        preview = self.method.preview([p for p, _ in pairs], [s for _, s in pairs])
        if not self.accelerator.is_main_process:
            return None
        return save_preview_grid(preview, self.out / "samples" / f"{name}.png")

    def train(self, resume: bool = False, progress: bool = True) -> Path:
        """Run to ``train.steps``. Only the main process writes files; every rank trains."""
        t, acc = self.cfg.train, self.accelerator
        if resume and not self.resume():
            raise FocusNFixError(f"--resume given but {str(self.out / 'checkpoints')!r} has no complete checkpoint")
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")
        acc.wait_for_everyone()
        log = _MetricsLog(self.out) if acc.is_main_process else None
        bar = tqdm(total=t.steps, initial=self.step, desc=f"{self.cfg.method} train",
                   disable=not (progress and acc.is_main_process), dynamic_ncols=True)
        try:
            while self.step < t.steps:
                start = time.perf_counter()
                logs = {"step": self.step + 1, **self.train_step(), "seconds": 0.0}
                logs["seconds"] = time.perf_counter() - start
                if log is not None and (self.step % t.log_every == 0 or self.step == t.steps or logs["skipped"]):
                    log.write(logs)
                bar.set_postfix({k: f"{logs[k]:.4g}" for k in ("reward", "constraint") if k in logs})
                bar.update(1)
                if t.sample_every and self.step % t.sample_every == 0:
                    self.sample_grid(f"step-{self.step:06d}")
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < t.steps and not self.bad_steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            if log is not None:
                log.close()
        self.finish()
        return self.out

    def finish(self) -> None:
        """Final checkpoint, diffusers-format LoRA in ``lora/``, final sample grid, ``summary.json``."""
        state = lora_state(self.backbone.unet) if self._needs_state() else None
        self.save_checkpoint(state)
        grid_path = self.sample_grid("final")
        if self.accelerator.is_main_process:
            lora = self.cfg.lora
            with atomic_dir(self.out / "lora") as tmp:
                save_lora(self.backbone.unet, tmp, lora.rank, lora.alpha, self.lora_targets, type(self.backbone.pipe), state=state)
            rows = [json.loads(line) for line in (self.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            summary = {"method": self.cfg.method, "steps": self.step, "processes": self.accelerator.num_processes,
                       "final": rows[-1] if rows else {}, "first": rows[0] if rows else {},
                       "samples": str(grid_path.relative_to(self.out))}
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        self.accelerator.wait_for_everyone()


class _MetricsLog:
    """``metrics.jsonl`` (one JSON object per logged step) and TensorBoard scalars when installed."""

    def __init__(self, out: Path):
        self.file = open(out / "metrics.jsonl", "a", encoding="utf-8")
        self.writer = _tensorboard(out)

    def write(self, logs: dict) -> None:
        self.file.write(json.dumps(logs) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in logs.items():
                self.writer.add_scalar(f"train/{key}", value, logs["step"])

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _accelerator(cpu: bool):
    """An Accelerator (process group, device, reductions); a second Trainer in the same process may set ``cpu`` otherwise."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(cpu=cpu)
    except ValueError:  # accelerate keeps a process-wide state; reset it (keeps the distributed setup)
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(cpu=cpu)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def train(cfg: Config, resume: bool = False, reward=None, progress: bool = True) -> Path:
    """Train ``cfg`` and return the run folder (the Python API of ``focusnfix train``)."""
    check_output_dir(Path(cfg.train.output_dir), resume)
    return Trainer(cfg, reward=reward).train(resume=resume, progress=progress)
