"""Which config keys may change when a run is resumed, and the check against the run's ``config.yaml``.

A resumed run continues the trajectory of its checkpoint, so only keys that do not redefine that
trajectory may change: the budget and the learning rate (the advice after a divergence is "lower
train.lr, then --resume"), logging / checkpoint / sample intervals, and switches that change speed
or memory but not the arithmetic beyond float rounding. The trainer applies the new values (the
optimizer's LR and the LR schedule's length) and records the change in ``metrics.jsonl`` (key
``config_changed`` of the first row after the resume). Any other change is refused with one line.

``--resume`` alone continues from the newest complete checkpoint; ``--resume PATH`` from the checkpoint
folder PATH of the same run (:func:`resolve_checkpoint`). Resuming from an older checkpoint replaces the
trajectory after it: the newer checkpoints are removed (:func:`remove_newer_checkpoints`), as the
metrics rows after it are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import warnings

import yaml

from ..backbones.lora import load_lora_state
from ..errors import ConfigError, FocusNFixError, short, short_path
from .checkpoint import (TENSOR_FILES, checkpoint_step, is_complete, list_checkpoints, load_training_state,
                         nonfinite_tensor, read_checkpoint)
from .export import drop_exports_after
from .folder import remove_leftovers
from .metrics_log import truncate_metrics

RESUMABLE = (
    # budget and optimisation
    "train.steps", "train.lr",
    # logging, checkpoints, samples, failure handling
    "train.log_every", "train.export_lora_steps", "train.sample_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.max_bad_steps",
    "train.collective_timeout", "data.sample_prompts", "data.sample_seeds",
    "train.eval_every", "train.eval_judges", "train.eval_batch_size", "data.eval_prompts", "data.eval_prompt_file",
    "data.eval_seeds",  # the held-out evaluation: logged, no effect on training
    "train.report_to", "train.push_to_hub", "train.hub_repo_id", "train.hub_private",  # sharing: no effect on training
    # speed and memory switches (same arithmetic up to float rounding)
    "train.reference_cache", "train.reference_cache_mb", "train.reference_cache_items", "train.batch_reference",
    "train.tf32", "train.cpu", "train.fsdp",
    "model.attention", "model.compile", "model.offload_text_encoders", "sampler.grad_checkpointing",
    "sampler.vae_checkpointing", "sampler.checkpoint_chunks",
)
IGNORED = ("train.output_dir",)  # the folder itself (relative or absolute spelling)
PATH_KEYS = ("model.path", "data.prompt_file", "data.dataset")  # compared as files when both spellings exist


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``; free-form mappings (``reward.args``) stay whole."""
    out: dict[str, Any] = {}
    for key, value in (data or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in ("reward.args",):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _same(key: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        return float(old) == float(new)
    if key in PATH_KEYS and isinstance(old, str) and isinstance(new, str):
        a, b = Path(old).expanduser(), Path(new).expanduser()
        return a.exists() and b.exists() and a.resolve() == b.resolve()
    return False


def config_changes(run_config: Path, new: dict) -> dict[str, list]:
    """``{key: [old, new]}`` for the resumable keys that differ from the run's ``config.yaml``; a
    :class:`ConfigError` naming the first other key that differs. No file (a run folder written by the
    Python API without one): no check."""
    if not run_config.is_file():
        return {}
    try:
        old = flatten(yaml.safe_load(run_config.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, UnicodeDecodeError, AttributeError, RecursionError):
        raise ConfigError(f"cannot read {run_config} to compare the resumed config with; "
                          "restore it or start a new run") from None
    new_flat = flatten(new)
    changed = {}
    for key, value in new_flat.items():
        if key in IGNORED or key not in old or _same(key, old[key], value):
            continue  # a key the old config lacks (added in a later version) keeps its default
        if key not in RESUMABLE:
            raise ConfigError(f"--resume with {key} changed ({short(old[key])} -> {short(value)}) "
                              "would not continue the checkpoint's run (docs/reference.md lists the keys that may "
                              "change): restore it or start a new train.output_dir")
        changed[key] = [old[key], value]
    return changed


def resolve_checkpoint(out: str | Path, given: str | Path) -> Path | None:
    """The checkpoint folder ``--resume PATH`` names, checked before any work: a complete checkpoint of
    the run in ``out`` (``out/checkpoints/step-*``). ``PATH`` = the run folder itself means the newest
    complete checkpoint (None). Anything else is a one-line :class:`ConfigError`."""
    from .checkpoint import is_complete

    out, path = Path(out), Path(given)
    root = out / "checkpoints"
    hint = ("give a checkpoint folder of this run (train.output_dir/checkpoints/step-N), "
            "or --resume alone for the newest")
    try:
        if not path.is_dir():
            raise ConfigError(f"--resume {short_path(path)}: no such checkpoint folder; {hint}")
        if out.is_dir() and path.resolve() == out.resolve():
            return None
        inside = root.is_dir() and path.resolve().parent == root.resolve()
    except OSError as e:
        raise ConfigError(f"--resume {short_path(path)}: {e.strerror or e}; {hint}") from None
    if not inside:
        raise ConfigError(f"--resume {short_path(path)} is not a checkpoint of train.output_dir {short_path(out)}; "
                          f"{hint}")
    if not path.name.startswith("step-") or not is_complete(path):
        raise ConfigError(f"--resume {short_path(path)} is not a complete checkpoint "
                          "(no manifest, or a file does not match "
                          f"its checksum); choose another one in {short_path(root)}")
    return path


def remove_newer_checkpoints(root: str | Path, ckpt: Path) -> list[Path]:
    """Delete the checkpoints after ``ckpt`` (their trajectory is being replaced), each one's manifest first
    so that a deletion cut short leaves a folder that is plainly incomplete; one warning names them."""
    import shutil

    from .checkpoint import MANIFEST, list_checkpoints

    newer = [c for c in list_checkpoints(root) if c.name > Path(ckpt).name]
    if newer:
        names = ", ".join(c.name for c in newer[:4]) + (", ..." if len(newer) > 4 else "")
        warnings.warn(f"resuming from {Path(ckpt).name}: removing the newer checkpoints {names}", stacklevel=2)
    for c in newer:
        (c / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(c, ignore_errors=True)
    return newer


def restore(ckpt: Path, steps: int, unet, optimizer, scheduler, scaler, fallback: bool = False) -> tuple[int, dict]:
    """Load checkpoint ``ckpt`` into the LoRA of ``unet`` (checked to fit before the optimizer), the optimizer, the
    LR schedule and the fp16 loss scaler; return its step and ``trainer.json`` (with the method's state, and the
    checkpoint's extra tensors such as ``ema``). A
    checkpoint beyond ``train.steps`` (``steps``) or with non-finite LoRA weights is refused with one line before
    anything is loaded.

    A checkpoint whose files match its manifest but cannot be read (damaged and its manifest rewritten to match, a
    file of another format) is refused with one line; with ``fallback`` (``ckpt`` was found, not named by the user)
    it is skipped with a warning for the next older complete checkpoint, as an incomplete one is. Every file is read
    before anything is loaded, so a refused checkpoint changes nothing."""
    older = (c for c in reversed(list_checkpoints(ckpt.parent)) if c.name < ckpt.name and is_complete(c))
    why = ""
    for candidate in [ckpt, *older] if fallback else [ckpt]:  # older ones hashed only when reached
        if why:
            warnings.warn(f"skipping {why}; resuming from the next older one", stacklevel=2)
        try:
            step, files = checkpoint_step(candidate), read_checkpoint(candidate)
        except Exception as e:  # noqa: BLE001 (json, safetensors and OS errors alike: the files cannot be read)
            why = f"checkpoint {short_path(candidate)} matches its manifest but cannot be read ({short(e)})"
            continue
        if step > steps:
            raise FocusNFixError(f"train.steps={steps} is below the checkpoint's step {step}; "
                                 f"give train.steps >= {step}")
        if nonfinite_tensor(files["lora"]) is not None:
            raise FocusNFixError(f"checkpoint {short_path(candidate)} holds non-finite LoRA weights; delete it to "
                                 "resume from an older one")
        load_lora_state(unet, files["lora"])
        state = load_training_state(files, optimizer, scheduler)
        state.update({name: files[name] for name in TENSOR_FILES if name in files})  # e.g. train.ema's average
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        return state["step"], state
    raise FocusNFixError(f"{why}, nor can any older one; delete the checkpoints to start again" if fallback else
                         f"{why}; delete it to resume from an older one")


def tidy_after_restore(out: Path, step: int, checkpoint: Path | None, changed: dict[str, list]) -> None:
    """The run folder ``out`` once step ``step`` is restored (main process): leftovers of a write interrupted by a
    crash removed; with ``changed`` config keys, the LoRA exports after ``step`` (their trajectory is replaced);
    with a given ``checkpoint``, the newer checkpoints; and the metrics rows after ``step`` (and a torn last line)."""
    remove_leftovers(out)
    if changed:
        drop_exports_after(out, step)
    if checkpoint is not None:  # before the rows: a crash in between leaves checkpoint the newest
        remove_newer_checkpoints(out / "checkpoints", checkpoint)
    truncate_metrics(out / "metrics.jsonl", step)
