"""Experiment trackers (``train.report_to``) through accelerate's trackers: the numeric values of every
``metrics.jsonl`` row as ``train/<key>`` scalars (``train.eval_every``'s ``eval/<key>`` as they are), and every
(labelled) sample grid as the image ``samples``.

``none`` (default), ``tensorboard`` (event files in the run folder's ``tensorboard/``), ``wandb`` (the
W&B project ``focusnfix``, run named after the run folder; ``WANDB_MODE=offline`` works offline) or
``all`` (both). A requested tracker whose package is missing is a one-line bad-input error at start:
never silently skipped. Only the main process logs (accelerate's trackers live there).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import FocusNFixError

REPORT_TO = {"none": (), "tensorboard": ("tensorboard",), "wandb": ("wandb",), "all": ("tensorboard", "wandb")}
INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}
PROJECT = "focusnfix"


def installed(name: str) -> bool:
    """Whether accelerate can start the tracker ``name`` in this environment."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    return {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[name]()


def preflight(cfg) -> dict:
    """Checks before any work (a missing tracker package; ``train.push_to_hub`` offline or without a
    token) and the keyword arguments for ``Accelerator`` (``log_with``, ``project_config``)."""
    t = cfg.train
    names = REPORT_TO[t.report_to]
    missing = [n for n in names if not installed(n)]
    if missing:
        raise FocusNFixError(f"train.report_to={t.report_to} needs {' and '.join(missing)}, which is not installed; "
                             f"{' and '.join(INSTALL[n] for n in missing)}, or set train.report_to=none")
    if t.push_to_hub:
        from ..runs.hub import check_can_push

        check_can_push()
    if not names:
        return {}
    from accelerate.utils import ProjectConfiguration

    out = Path(t.output_dir)
    return {"log_with": list(names), "project_config": ProjectConfiguration(project_dir=str(out),
                                                                            logging_dir=str(out / "tensorboard"))}


def track(log, accelerator, cfg):
    """``log`` (a :class:`~focusnfix.metrics_log.MetricsLog`) as is without trackers; else the trackers are
    started (with the flattened config as hyperparameters) and each row also goes to them."""
    if not getattr(accelerator, "log_with", None):
        return log
    out = Path(cfg.train.output_dir)
    accelerator.init_trackers(PROJECT, config=hyperparameters(cfg),
                              init_kwargs={"wandb": {"name": out.name, "dir": str(out)}})
    return TrackedLog(log, accelerator)


class TrackedLog:
    """``metrics.jsonl`` first (the run folder's record), then the trackers: the same numeric values."""

    def __init__(self, log, accelerator):
        self.log, self.accelerator = log, accelerator

    def write(self, logs: dict) -> None:
        self.log.write(logs)
        values = {k if k.startswith("eval/") else f"train/{k}": v for k, v in logs.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(values, step=int(logs["step"]))

    def close(self) -> None:
        self.log.close()


def log_grid(accelerator, path: Path | None, step: int) -> Path | None:
    """Send the sample grid at ``path`` to the trackers as image ``samples`` at ``step``; return ``path``."""
    trackers = getattr(accelerator, "trackers", None) or []
    if path is None or not trackers:
        return path
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        image = np.asarray(im.convert("RGB"))
    for tracker in trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("samples", image, step, dataformats="HWC")
            tracker.writer.flush()
        elif tracker.name == "wandb":
            tracker.log_images({"samples": [image]}, step=step)
    return path


def finish(accelerator) -> None:
    """Close the trackers (not ``accelerator.end_training()``: that also ends the process group)."""
    for tracker in getattr(accelerator, "trackers", None) or []:
        tracker.finish()
    if getattr(accelerator, "trackers", None):
        accelerator.trackers = []


def hyperparameters(cfg) -> dict:
    """The config as flat ``{"train.lr": 1e-4, ...}`` scalars (lists, mappings and None as text)."""
    from ..config import to_dict
    from ..runs.resume import flatten

    flat = flatten(to_dict(cfg))
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in flat.items()}
