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

from ..backbones import load_backbone
from ..runs.checkpoint import (atomic_dir, atomic_write_text, checkpoint_step, fault_point, io_errors, latest_checkpoint,
                         load_training_state, nonfinite_tensor, optimizer_files, prune_checkpoints, read_lora, save_checkpoint)
from ..config import Config, save_config, to_dict
from ..errors import FocusNFixError, RunFailed, TrainingDiverged, os_error_message, short_path
from ..runs.locking import FolderLock
from ..runs.metrics_log import MetricsLog, read_metrics, truncate_metrics
from ..images import save_preview_grid
from ..backbones.lora import LORA_FILE, add_lora, load_lora_state, lora_parameters, lora_state, save_lora
from ..runs.hub import push_after_training
from ..runs.modelcard import write_model_card
from ..methods import METHODS, Batch
from ..prompts import resolve_prompts
from ..rewards.registry import build_reward
from ..sampling import draw_k
from ..backbones.sharding import full, local
from . import tracking


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
    return [Batch(prompts=[prompts[i] for i in idx[j: j + t.batch_size]], seeds=[int(s) for s in seeds[j: j + t.batch_size]], k=k,
                  step=step)
            for j in mine]


def export_name(step: int) -> str:
    """The folder of ``train.export_lora_steps``' LoRA at ``step`` inside the run folder."""
    return f"lora-step-{step:06d}"


def check_output_dir(out: Path, resume: bool, holding_lock: bool = False) -> None:
    """Fail early (before anything is written) on an unusable run folder. A folder holds a run once it
    has a complete checkpoint; one left by a run that died before its first checkpoint starts afresh."""
    try:
        blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    except OSError as e:  # e.g. a path component too long
        raise FocusNFixError(f"train.output_dir: {os_error_message(e, out)}") from None
    if blocker is not None:
        raise FocusNFixError(f"train.output_dir {short_path(out)}: {short_path(blocker)} is a file; choose a folder")
    if not holding_lock:
        run_lock(out).check()  # another trainer writing here: say so first
    if out.exists() and not resume and latest_checkpoint(out / "checkpoints", quiet=True) is not None:
        raise FocusNFixError(f"run folder {short_path(out)} already holds a run; pass --resume or choose another train.output_dir")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise FocusNFixError(f"cannot write to {short_path(parent)}; choose a writable train.output_dir")


def run_lock(out: Path) -> FolderLock:
    """The run folder's lock (``out/.lock``), held by the main process of a training run."""
    return FolderLock(out / ".lock", "run folder", out,
                      "another `focusnfix train` is writing it: wait for it to finish or choose another train.output_dir")


class Trainer:
    """Builds backbone, LoRA, reward and method from a :class:`Config` and trains.

    ``reward`` may be passed as an object to bypass the registry (Python API).
    """

    def __init__(self, cfg: Config, reward=None, backbone=None):
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        self.prompts = resolve_prompts(cfg.data.prompts, cfg.data.prompt_file, cfg.data.prompt_set)
        self.accelerator = _accelerator(cfg.train.cpu, cfg.train.collective_timeout, **tracking.preflight(cfg))
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
        if self.method.needs_reference:
            from .cache import build_reference_cache

            self.method.cache = build_reference_cache(self.backbone, self.reward, cfg)  # reads whole weights: before sharding
        self.sharded = self._shard()
        if self.sharded:
            self.method.lockstep = self._any_rank
        if m.compile:  # after add_lora and sharding, so the compiled forward includes both
            from ..backbones.compile import compile_unet

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
        self.config_changed: dict[str, list] = {}  # keys changed on --resume, recorded in metrics.jsonl

    def _shard(self) -> bool:
        """FSDP (``train.fsdp`` or an accelerate FSDP config): shard the frozen UNet over the ranks."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        plugin = getattr(acc.state, "fsdp_plugin", None)
        if not (self.cfg.train.fsdp or acc.distributed_type == DistributedType.FSDP) or acc.num_processes == 1:
            return False
        from ..backbones.sharding import reshard_after_forward, shard_unet

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
    def resume(self, checkpoint: Path | None = None) -> bool:
        """Restore ``checkpoint`` (a complete checkpoint folder of this run, checked by
        :func:`focusnfix.resume.resolve_checkpoint`; newer checkpoints are then removed), by default the
        newest complete one; False if there is none. Config keys that may change on
        resume (:mod:`focusnfix.resume`) are applied, others refused, before anything is modified; then
        leftovers of a write interrupted by a crash (``.tmp-*`` folders) are removed and metrics rows
        after the checkpoint (and a torn last line) dropped."""
        from ..runs.resume import config_changes, remove_newer_checkpoints

        ckpt = checkpoint if checkpoint is not None else latest_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            return False
        changed = config_changes(self.out / "config.yaml", to_dict(self.cfg))
        step = checkpoint_step(ckpt)
        if step > self.cfg.train.steps:
            raise FocusNFixError(f"train.steps={self.cfg.train.steps} is below the checkpoint's step {step}; "
                                 f"give train.steps >= {step}")
        lora = read_lora(ckpt)
        if nonfinite_tensor(lora) is not None:
            raise FocusNFixError(f"checkpoint {short_path(ckpt)} holds non-finite LoRA weights; delete it to resume from an older one")
        load_lora_state(self.backbone.unet, lora)  # checks the LoRA fits before the optimizer
        state = load_training_state(ckpt, self.optimizer, self.scheduler)
        self.step = state["step"]
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self._apply_changes(changed)
        if self.accelerator.is_main_process:
            self._remove_leftovers()
            if changed:
                self._drop_exports_after(self.step)
            if checkpoint is not None:  # before the rows: a crash in between leaves ckpt the newest
                remove_newer_checkpoints(self.out / "checkpoints", ckpt)
            truncate_metrics(self.out / "metrics.jsonl", self.step)
        return True

    def _apply_changes(self, changed: dict[str, list]) -> None:
        """A changed train.lr or train.steps: the optimizer's LR and the schedule (its length comes from the
        new train.steps) continue from the checkpoint's step with the new values."""
        self.config_changed = changed
        if not {"train.lr", "train.steps"} & set(changed):
            return
        lr, fn = self.cfg.train.lr, self.scheduler.lr_lambdas[0]
        self.scheduler.base_lrs = [lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = lr
            group["lr"] = lr * fn(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _remove_leftovers(self) -> None:
        for leftover in (self.out / "checkpoints").glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.out.glob(".tmp-*"):  # an interrupted lora/ write
            shutil.rmtree(leftover, ignore_errors=True)

    def kept_checkpoint(self) -> str:
        """What a failed run leaves to resume from, for its one-line message."""
        ckpt = latest_checkpoint(self.out / "checkpoints", quiet=True)
        if ckpt is None:
            return "no checkpoint was saved yet, so a rerun starts from step 0"
        return f"the last good checkpoint {short_path(ckpt, 60)} (step {checkpoint_step(ckpt)}) is intact"

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
            fault_point("checkpoint-saved", self.step)
            prune_checkpoints(self.out / "checkpoints", self.cfg.train.keep_checkpoints, self.step)
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
            self.scaler.step(self.optimizer)  # = optimizer.step() without fp16
            self.bad_steps = 0
            grad_norm, weights_ok = self._norm_and_weights_finite(norm)  # one host sync for both
            if not weights_ok:  # finite gradients, yet the update overflowed: nothing to skip back to
                raise TrainingDiverged(f"the LoRA weights became NaN/Inf in step {self.step + 1} (train.lr={t.lr:g}); "
                                       f"{self.kept_checkpoint()}: lower train.lr, then rerun with --resume")
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
                                   f"{self.kept_checkpoint()}: lower train.lr or check the reward, then rerun with --resume")
        logs = {**totals, "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0], "skipped": float(not finite)}
        return logs if scale is None else {**logs, "loss_scale": scale}

    def autocast(self):
        """``train.mixed_precision``: fp16/bf16 autocast of the forward passes (LoRA parameters stay float32).
        No cast cache: torch 2.8 (not 2.13) reuses a LoRA weight's cast made under no_grad (the first T - K steps)
        in the gradient-carrying steps, which then have no gradient; recasting the small LoRA weights is cheap."""
        mp = self.cfg.train.mixed_precision
        return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16 if mp == "bf16" else torch.float16,
                              enabled=mp != "no", cache_enabled=False)

    def _norm_and_weights_finite(self, norm: torch.Tensor) -> tuple[float, bool]:
        """(the gradients' norm before clipping, every LoRA weight is finite on every rank): read from the
        device in one sync (sharded: the weights' flag after one all-reduce, a collective)."""
        ok = _all_finite(local(p.detach()) for p in self.params)
        if self.sharded:
            norm = full(norm)
            ok = self.accelerator.reduce((~ok).float().reshape(1), reduction="sum").reshape(()) == 0
        grad_norm, ok = torch.stack([norm.detach().float().reshape(()), ok.float()]).tolist()
        return grad_norm, ok == 1.0

    def _average_gradients(self, nonfinite: float) -> tuple[bool, bool]:
        """Data parallel: mean of the LoRA gradients over ranks (one all-reduce).

        Returns (every rank's loss was finite, every averaged gradient is finite). Sharded (FSDP),
        the gradients arrive averaged (reduce-scatter); only the two checks span the ranks."""
        acc = self.accelerator
        if self.sharded:
            ok = _all_finite(local(p.grad) for p in self.params if p.grad is not None)
            flags = acc.reduce(torch.stack([torch.tensor(nonfinite, device=acc.device), (~ok).float().to(acc.device)]), reduction="sum")
            bad_loss, bad_grad = flags.tolist()
            return bad_loss == 0.0, bad_grad == 0.0
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if acc.num_processes == 1:
            return nonfinite == 0.0, bool(_all_finite(grads))  # one host sync for all tensors
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
        return tracking.log_grid(self.accelerator, save_preview_grid(preview, self.out / "samples" / f"{name}.png"), self.step)

    def train(self, resume: bool | Path = False, progress: bool = True) -> Path:
        """Run to ``train.steps``. Only the main process writes files (holding the run folder's lock);
        every rank trains. A disk that fills up, or a collective that times out, is a one-line
        :class:`RunFailed` naming the checkpoint that stays intact."""
        acc = self.accelerator
        created = not self.out.exists()
        lock = None
        if acc.is_main_process:
            with io_errors(self.out):
                self.out.mkdir(parents=True, exist_ok=True)
            lock = run_lock(self.out)
        try:
            if lock is not None:
                lock.acquire()
            return self._train(resume, progress)
        except FocusNFixError:
            if created and self.step == 0 and acc.is_main_process and lock is not None and lock.held:
                lock.release()
                shutil.rmtree(self.out, ignore_errors=True)  # bad input found before the first step: leave nothing
            raise
        except OSError as e:
            raise RunFailed(f"{os_error_message(e)}; {self.kept_checkpoint()}: then rerun with --resume") from e
        except RuntimeError as e:
            if acc.num_processes > 1 and _collective_failure(e):
                raise RunFailed(f"a collective operation timed out after train.collective_timeout="
                                f"{self.cfg.train.collective_timeout:g} s or failed ({_first_line(e)}): another process of "
                                f"the job died or hangs; {self.kept_checkpoint()}") from e
            raise
        finally:
            tracking.finish(acc)
            if lock is not None:
                lock.release()

    def _train(self, resume: bool | Path, progress: bool) -> Path:
        t, acc = self.cfg.train, self.accelerator
        if acc.is_main_process:
            check_output_dir(self.out, resume, holding_lock=True)  # again, now under the lock
        resumed = self.resume(resume if isinstance(resume, Path) else None) if resume else False
        if resume and not resumed:
            warnings.warn(f"{short_path(self.out / 'checkpoints')} has no complete checkpoint; starting from step 0", stacklevel=2)
        acc.wait_for_everyone()  # every rank has compared its config with config.yaml before it is rewritten
        if acc.is_main_process:
            if not resumed:  # a fresh start, maybe where a run died before its first checkpoint: drop its rows
                self._remove_leftovers()
                truncate_metrics(self.out / "metrics.jsonl", 0)
            save_config(self.cfg, self.out / "config.yaml")
            fault_point("config-write", 0)
        acc.wait_for_everyone()
        log = tracking.track(MetricsLog(self.out), acc, self.cfg) if acc.is_main_process else None
        bar = tqdm(total=t.steps, initial=self.step, desc=f"{self.cfg.method} train",
                   disable=not (progress and acc.is_main_process), dynamic_ncols=True)
        try:
            while self.step < t.steps:
                start = time.perf_counter()
                logs = {"step": self.step + 1, **self.train_step(), "seconds": 0.0}
                logs["seconds"] = time.perf_counter() - start
                if self.config_changed:  # the first row after a resume that changed keys records them
                    logs["config_changed"], self.config_changed = self.config_changed, {}
                if log is not None and (self.step % t.log_every == 0 or self.step == t.steps or logs["skipped"]
                                        or "config_changed" in logs):
                    log.write(logs)
                bar.set_postfix({k: f"{logs[k]:.4g}" for k in ("reward", "constraint") if k in logs})
                bar.update(1)
                if t.sample_every and self.step % t.sample_every == 0:
                    self.sample_grid(f"step-{self.step:06d}")
                if self.step in t.export_lora_steps:
                    self.export_lora()
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < t.steps and not self.bad_steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            if log is not None:
                log.close()
        self.finish()
        return self.out

    def write_lora(self, name: str, state: dict[str, torch.Tensor] | None) -> Path:
        """``RUN/name/``: the diffusers-format LoRA and its model card, written atomically (main process)."""
        lora, folder = self.cfg.lora, self.out / name
        with io_errors(folder), atomic_dir(folder) as tmp:
            fault_point("lora-middle" if name == "lora" else "export-middle", self.step)
            save_lora(self.backbone.unet, tmp, lora.rank, lora.alpha, self.lora_targets, type(self.backbone.pipe), state=state)
            load_id = self.cfg.train.hub_repo_id if name == "lora" else None
            write_model_card(tmp, self.out, self.step, type(self.backbone.pipe).__name__, getattr(self.reward, "name", None),
                             load_id or str((self.out if not self.out.is_absolute() else Path(self.out.name)) / name))
        return folder

    def export_lora(self) -> Path | None:
        """``train.export_lora_steps``: the LoRA of this step in ``RUN/lora-step-NNNNNN/`` (the format of
        ``lora/``). One already there is kept: the same config continues the same trajectory (a resume that
        changes a key drops the exports after its checkpoint, :meth:`_drop_exports_after`)."""
        folder = self.out / export_name(self.step)
        if not self._needs_state() or (not self.sharded and (folder / LORA_FILE).is_file()):
            return None
        state = lora_state(self.backbone.unet)  # sharded: a collective, every rank gathers
        if self.accelerator.is_main_process and not (folder / LORA_FILE).is_file():
            self.write_lora(folder.name, state)
        return folder

    def _drop_exports_after(self, step: int) -> None:
        """A resume that changed config keys replaces the trajectory after ``step``: its exports go too."""
        for folder in sorted(self.out.glob("lora-step-*")):
            if folder.name[len("lora-step-"):].isdigit() and int(folder.name[len("lora-step-"):]) > step:
                shutil.rmtree(folder, ignore_errors=True)

    def finish(self) -> None:
        """Final checkpoint, diffusers-format LoRA in ``lora/``, final sample grid, ``summary.json``."""
        state = lora_state(self.backbone.unet) if self._needs_state() else None
        self.save_checkpoint(state)
        grid_path = self.sample_grid("final")
        if self.accelerator.is_main_process:
            self.write_lora("lora", state)
            rows = read_metrics(self.out / "metrics.jsonl")
            summary = {"method": self.cfg.method, "steps": self.step, "processes": self.accelerator.num_processes,
                       "final": rows[-1] if rows else {}, "first": rows[0] if rows else {},
                       "samples": str(grid_path.relative_to(self.out))}
            fault_point("before-summary", self.step)
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        self.accelerator.wait_for_everyone()
        if self.cfg.train.push_to_hub and self.accelerator.is_main_process:  # after the barrier: an upload may be slow
            push_after_training(self.out, self.cfg.train.hub_repo_id, self.cfg.train.hub_private)


def _all_finite(tensors) -> torch.Tensor:
    """Whether every element of every tensor is finite, as one 0-d bool tensor on their device (no host
    sync until it is read)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return torch.stack(flags).all() if flags else torch.tensor(True)


def _accelerator(cpu: bool, timeout_s: float = 300.0, **kwargs):
    """An Accelerator (process group, device, reductions); a second Trainer in the same process may set
    ``cpu`` otherwise. ``timeout_s``: how long a collective waits for the other processes
    (``train.collective_timeout``; set when this call creates the process group)."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))]
    try:
        return Accelerator(cpu=cpu, kwargs_handlers=handlers, **kwargs)
    except ValueError:  # accelerate keeps a process-wide state; reset it (keeps the distributed setup)
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(cpu=cpu, kwargs_handlers=handlers, **kwargs)


def _collective_failure(e: BaseException) -> bool:
    """Whether an error comes from the process group (a timeout, a peer that vanished)."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(e, dist_error):
        return True
    text = str(e).lower()
    return any(k in text for k in ("gloo", "nccl", "timed out", "timeout", "connection closed", "connection reset", "broken pipe"))


def _first_line(e: BaseException) -> str:
    """The gist of a backend error, without its source-location prefixes: ``Timed out waiting 5000ms ...``."""
    import re

    lines = [re.sub(r"\[[^\]]*\]\s*", "", ln).strip() for ln in str(e).splitlines()]
    return next((ln for ln in lines if ln), type(e).__name__)[:60]


def train(cfg: Config, resume: bool | str | Path = False, reward=None, progress: bool = True) -> Path:
    """Train ``cfg`` and return the run folder (the Python API of ``focusnfix train``). ``resume``: True
    continues from the newest complete checkpoint, a path from that checkpoint folder of the run."""
    if isinstance(resume, (str, Path)):
        from ..runs.resume import resolve_checkpoint

        resume = resolve_checkpoint(cfg.train.output_dir, resume) or True
    check_output_dir(Path(cfg.train.output_dir), resume)
    return Trainer(cfg, reward=reward).train(resume=resume, progress=progress)
