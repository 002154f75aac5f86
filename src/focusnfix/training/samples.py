"""The run's sample grids (``samples/*.png``): a row of Î0 | M | Î per ``data.sample_prompts`` x
``data.sample_seeds`` pair (default prompts: the first 4 training prompts), drawn with the weights the run shows (the
EMA's with ``train.ema``), labelled (each row's seed and prompt, the columns, the step: :func:`~focusnfix.images.
save_preview_grid`) and sent to the trackers (``train.report_to``)."""
from __future__ import annotations

from pathlib import Path

from ..images import save_preview_grid
from . import tracking


def sample_grid(trainer, name: str) -> Path | None:
    """``RUN/samples/NAME.png`` for ``trainer`` (a :class:`~focusnfix.training.trainer.Trainer`) at its step: the main
    process writes it and returns its path; sharded, every rank runs the preview (its forward is a collective)."""
    acc, d = trainer.accelerator, trainer.cfg.data
    if not (acc.is_main_process or trainer.sharded):
        return None
    pairs = [(p, s) for p in d.sample_prompts or trainer.prompts[:4] for s in d.sample_seeds]
    with trainer.ema.applied():
        preview = trainer.method.preview([p for p, _ in pairs], [s for _, s in pairs])
    if not acc.is_main_process:
        return None
    title = f"step {trainer.step}" + (f", EMA of the LoRA (decay {trainer.cfg.train.ema:g})" if trainer.ema else "")
    grid = save_preview_grid(preview, trainer.out / "samples" / f"{name}.png", rows=pairs, title=title)
    return tracking.log_grid(acc, grid, trainer.step)
