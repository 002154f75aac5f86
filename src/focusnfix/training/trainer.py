"""Training loop on accelerate: AdamW on the LoRA parameters only, LR schedule, accumulation, clipping, mixed
precision, metrics, sample grids and atomic, resumable checkpoints. All randomness of a step (prompt choice, noise
seeds, K) is derived from ``(train.seed, step)``, so a resumed run continues exactly the same trajectory.

Beside it: the pieces it is built from (:mod:`.setup`), the step's batches (:mod:`.batches`), the collectives
(:mod:`.distributed`), the LoRA's moving average (:mod:`.ema`), the held-out evaluation (:mod:`.periodic_eval`), the
sample grids (:mod:`.samples`); the run folder, resume and LoRA exports (:mod:`focusnfix.runs`)."""
from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..backbones.lora import LORA_FILE, add_lora, lora_parameters, lora_state
from ..config import Config, to_dict
from ..config.methods import METHODS
from ..config.names import import_path
from ..errors import FocusNFixError, TrainingDiverged, short_path
from ..methods.base import Method, MethodContext
from ..prompts import config_prompts
from ..rewards.registry import build_reward
from ..runs.checkpoint import (fault_point, io_errors, latest_checkpoint, optimizer_files, prune_checkpoints,
                               save_checkpoint)
from ..runs.export import export_name, write_lora_folder
from ..runs.folder import check_output_dir, kept_checkpoint, remove_leftovers, run_lock, write_summary
from ..runs.hub import push_after_training
from ..runs.metrics_log import MetricsLog, truncate_metrics
from ..runs.resume import config_changes, resolve_checkpoint, restore, tidy_after_restore
from ..runs.run_config import save_config
from . import tracking
from .batches import continue_schedule, lr_lambda, make_batches  # noqa: F401 (lr_lambda: re-exported)
from .cache import build_reference_cache
from .distributed import Ranks, run_failures
from .ema import EMA
from .periodic_eval import PeriodicEval
from .samples import sample_grid
from .setup import accelerator_for, autocast_for, backbone_for, optimizer_for


class Trainer:
    """Builds backbone, LoRA, reward and method from a :class:`Config` and trains. ``reward`` may be passed as an
    object to bypass the registry (Python API)."""

    def __init__(self, cfg: Config, reward=None, backbone=None):
        self.cfg, t, self.out = cfg, cfg.train, Path(cfg.train.output_dir)
        self.prompts = config_prompts(cfg.data)
        self.accelerator = accelerator_for(cfg)  # then train.seed seeds the global generators
        self.backbone = backbone_for(cfg, self.accelerator.device, backbone)
        self.reward = reward if reward is not None else build_reward(cfg.reward.name, **cfg.reward.args)
        self.lora_targets = list(cfg.lora.targets or self.backbone.lora_targets)  # default: the family's
        add_lora(self.backbone.unet, cfg.lora.rank, cfg.lora.alpha, self.lora_targets, cfg.lora.dropout,
                 cfg.lora.use_dora)
        self.ranks = Ranks(self.accelerator, t.fsdp)
        self.method: Method = self.build_method()
        self.ranks.shard(self.backbone.unet, t.mixed_precision)  # after the reference cache read the whole weights
        self.sharded = self.ranks.sharded
        if cfg.model.compile:  # after add_lora and sharding, so the compiled forward includes both
            from ..backbones.compile import compile_unet  # torch.compile's machinery: imported when asked for

            compile_unet(self.backbone.unet)
        named = lora_parameters(self.backbone.unet)  # after sharding: the sharded ones
        self.params, self.ema = list(named.values()), EMA(named, t.ema)  # EMA: a no-op unless train.ema
        self.optimizer, self.scheduler, self.scaler = optimizer_for(self.params, t, self.accelerator.device.type)
        self.evaluator = PeriodicEval(cfg, self.backbone, self.reward, self.ranks, self.ema)  # train.eval_every
        self.step, self.bad_steps = 0, 0
        self.config_changed: dict[str, list] = {}  # keys changed on --resume, recorded in metrics.jsonl

    def build_method(self) -> Method:
        """``method``'s class (:mod:`focusnfix.config.methods`) given the reference cache's builder (reading the whole
        weights: before sharding), the ranks' lockstep when sharded, and whether the reference pass may join the
        trained pass's batch (not under ``model.compile``: its per-row hooks are invisible to the compiled graph)."""
        cfg = self.cfg
        context = MethodContext(make_cache=lambda: build_reference_cache(self.backbone, self.reward, cfg),
                                lockstep=self.ranks.any_rank if self.ranks.sharded else None,
                                batch_reference=cfg.train.batch_reference and not cfg.model.compile)
        return import_path(METHODS[cfg.method].path, "method")(self.backbone, self.reward, cfg, context)

    # -- state ----------------------------------------------------------------------------------
    def resume(self, checkpoint: Path | None = None) -> bool:
        """Restore ``checkpoint`` (complete, of this run: :func:`resolve_checkpoint`; newer ones are then removed), by
        default the newest readable one; False if there is none. Config keys that may change on resume (runs/resume.py)
        are applied, others refused, before anything is modified; then the run folder is tidied (tidy_after_restore)."""
        ckpt = checkpoint if checkpoint is not None else latest_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            return False
        t, changed = self.cfg.train, config_changes(self.out / "config.yaml", to_dict(self.cfg))
        self.step, state = restore(ckpt, t.steps, self.backbone.unet, self.optimizer, self.scheduler, self.scaler,
                                   fallback=checkpoint is None)
        self.method.load_state_dict(state.get("method", {}))
        self.ema.load(state.get("ema"))
        self.config_changed = changed
        if {"train.lr", "train.steps"} & set(changed):
            continue_schedule(self.optimizer, self.scheduler, t.lr)
        if self.accelerator.is_main_process:
            tidy_after_restore(self.out, self.step, checkpoint, changed)
        return True

    def save_checkpoint(self, lora: dict[str, torch.Tensor] | None = None) -> Path:
        """Main process writes the state atomically; all ranks wait. ``lora``: an already gathered LoRA state."""
        folder = self.out / "checkpoints" / f"step-{self.step:06d}"
        if self.ranks.holds_state():
            lora = lora if lora is not None else lora_state(self.backbone.unet)
            optimizer, tensors = optimizer_files(self.optimizer), self.ema.tensors()
        if self.accelerator.is_main_process:
            extra = {"scaler": self.scaler.state_dict(), "method": self.method.state_dict()}
            save_checkpoint(folder, self.step, lora, optimizer, self.scheduler, extra, tensors)
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
        totals = self.ranks.average_logs(totals)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.unscale_(self.optimizer)  # fp16: every rank unscales the same averaged gradients
        finite = losses_ok and grads_ok
        if finite:
            norm = torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
            self.scaler.step(self.optimizer)  # = optimizer.step() without fp16
            self.ema.update(self.step)
            self.bad_steps = 0
            grad_norm, weights_ok = self._norm_and_weights_finite(norm)  # one host sync for both
            self.method.after_step(totals)  # e.g. the budget's multiplier, from the step's averaged logs
            if not weights_ok:  # finite gradients, yet the update overflowed: nothing to skip back to
                raise TrainingDiverged(f"the LoRA weights became NaN/Inf in step {self.step + 1} (train.lr={t.lr:g}); "
                                       f"{kept_checkpoint(self.out)}: lower train.lr, then rerun with --resume")
        else:
            grad_norm = float("nan")
            overflow = scale is not None and losses_ok and scale > 1.0  # fp16 overflow (the scaler backs off)
            self.bad_steps += not overflow  # is not a bad step
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the schedule is a function of the step, skipped or not
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        self.step += 1
        fault_point("after-step", self.step)
        if self.bad_steps >= t.max_bad_steps:
            raise TrainingDiverged(f"{self.bad_steps} consecutive steps had a non-finite loss or gradient (last: step "
                                   f"{self.step}); {kept_checkpoint(self.out)}: lower train.lr or check the reward, "
                                   "then rerun with --resume")
        logs = {**totals, "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0], "skipped": float(not finite)}
        return logs if scale is None else {**logs, "loss_scale": scale}

    def autocast(self):
        """``train.mixed_precision``'s autocast of the forward passes (:func:`.setup.autocast_for`)."""
        return autocast_for(self.cfg.train.mixed_precision, self.accelerator.device.type)

    def _norm_and_weights_finite(self, norm: torch.Tensor) -> tuple[float, bool]:
        """(the gradients' norm before clipping, every LoRA weight finite on every rank), in one host sync."""
        return self.ranks.norm_and_weights_finite(self.params, norm)

    def _average_gradients(self, nonfinite: float) -> tuple[bool, bool]:
        """The LoRA gradients averaged over ranks; (every rank's loss was finite, every gradient is finite)."""
        return self.ranks.average_gradients(self.params, nonfinite)

    # -- the loop ---------------------------------------------------------------------------------
    def sample_grid(self, name: str) -> Path | None:
        """``RUN/samples/NAME.png``: labelled rows of Î0 | M | Î at this step (:func:`.samples.sample_grid`)."""
        return sample_grid(self, name)

    def train(self, resume: bool | Path = False, progress: bool = True) -> Path:
        """Run to ``train.steps``. Only the main process writes files (holding the run folder's lock);
        every rank trains. A disk that fills up, or a collective that times out, is a one-line
        :class:`RunFailed` naming the checkpoint that stays intact."""
        acc, created, lock = self.accelerator, not self.out.exists(), None
        if acc.is_main_process:
            with io_errors(self.out):
                self.out.mkdir(parents=True, exist_ok=True)
            lock = run_lock(self.out)
        try:
            with run_failures(acc, self.cfg.train.collective_timeout, lambda: kept_checkpoint(self.out)):
                if lock is not None:
                    lock.acquire()
                return self._train(resume, progress)
        except FocusNFixError:
            if created and self.step == 0 and acc.is_main_process and lock is not None and lock.held:
                lock.release()
                shutil.rmtree(self.out, ignore_errors=True)  # bad input found before the first step: leave nothing
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
            warnings.warn(f"{short_path(self.out / 'checkpoints')} has no complete checkpoint; starting from step 0",
                          stacklevel=2)
        acc.wait_for_everyone()  # every rank has compared its config with config.yaml before it is rewritten
        if acc.is_main_process:
            if not resumed:  # a fresh start, maybe where a run died before its first checkpoint: drop its rows
                remove_leftovers(self.out)
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
                logs.update(self.evaluator() if self.evaluator.due(self.step) else {})  # every rank: collectives
                if self.config_changed:  # the first row after a resume that changed keys records them
                    logs["config_changed"], self.config_changed = self.config_changed, {}
                if log is not None and (self.step % t.log_every == 0 or self.step == t.steps or logs["skipped"]
                                        or "config_changed" in logs or self.evaluator.due(self.step)):
                    log.write(logs)
                bar.set_postfix({k: f"{logs[k]:.4g}" for k in ("reward", "constraint") if k in logs})
                bar.update(1)
                if t.sample_every and self.step % t.sample_every == 0:
                    self.sample_grid(f"step-{self.step:06d}")
                if self.step in t.export_lora_steps:
                    self.export_lora()
                if (t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < t.steps
                        and not self.bad_steps):
                    self.save_checkpoint()
        finally:
            bar.close()
            if log is not None:
                log.close()
        self.finish()
        return self.out

    def write_lora(self, name: str, state: dict[str, torch.Tensor] | None) -> Path:
        """``RUN/name/``: the diffusers-format LoRA and its model card, written atomically (main process)."""
        return write_lora_folder(self.out, name, self.step, self.backbone.unet, self.cfg.lora, self.lora_targets,
                                 type(self.backbone.pipe), getattr(self.reward, "name", None),
                                 self.cfg.train.hub_repo_id, state)

    def export_lora(self) -> Path | None:
        """``train.export_lora_steps``: this step's LoRA in ``RUN/lora-step-NNNNNN/`` (as ``lora/``); one already there
        is kept (the same config continues the same trajectory; a resume that changes a key drops later exports)."""
        folder = self.out / export_name(self.step)
        if not self.ranks.holds_state() or (not self.sharded and (folder / LORA_FILE).is_file()):
            return None
        state = self.ema.state() or lora_state(self.backbone.unet)  # sharded: a collective, every rank gathers
        if self.accelerator.is_main_process and not (folder / LORA_FILE).is_file():
            self.write_lora(folder.name, state)
        return folder

    def finish(self) -> None:
        """Final checkpoint, diffusers-format LoRA in ``lora/`` (with ``train.ema``: the average), final sample grid,
        ``summary.json``."""
        state, shown = (lora_state(self.backbone.unet), self.ema.state()) if self.ranks.holds_state() else (None, None)
        self.save_checkpoint(state)
        grid_path = self.sample_grid("final")
        if self.accelerator.is_main_process:
            self.write_lora("lora", shown or state)
            write_summary(self.out, self.cfg.method, self.step, self.accelerator.num_processes, grid_path)
        self.accelerator.wait_for_everyone()
        if self.cfg.train.push_to_hub and self.accelerator.is_main_process:  # after the barrier: an upload may be slow
            push_after_training(self.out, self.cfg.train.hub_repo_id, self.cfg.train.hub_private)


def train(cfg: Config, resume: bool | str | Path = False, reward=None, progress: bool = True) -> Path:
    """Train ``cfg`` and return the run folder (the Python API of ``focusnfix train``). ``resume``: True
    continues from the newest complete checkpoint, a path from that checkpoint folder of the run."""
    if isinstance(resume, (str, Path)):
        resume = resolve_checkpoint(cfg.train.output_dir, resume) or True
    check_output_dir(Path(cfg.train.output_dir), resume)
    return Trainer(cfg, reward=reward).train(resume=resume, progress=progress)
