"""The pieces a :class:`~focusnfix.training.trainer.Trainer` is built from, in the order it builds them: the
accelerator (then the global seed), the backbone on its device, and the optimizer with its LR schedule and loss
scaler; and the autocast of its forward passes."""
from __future__ import annotations

import warnings

import torch

from ..backbones import load_backbone
from ..config import Config, TrainConfig
from ..errors import FocusNFixError
from . import tracking
from .batches import lr_lambda
from .distributed import make_accelerator


def accelerator_for(cfg: Config, stacklevel: int = 3):
    """The run's Accelerator (trackers per ``train.report_to``); then ``train.seed`` seeds torch, numpy and
    random, and ``train.tf32`` allows TF32 matmuls. A precision set through accelerate is not used: a warning
    says so (``stacklevel``: pointing at the Trainer's caller)."""
    from accelerate.utils import set_seed  # accelerate (heavy): imported when a trainer is built

    t = cfg.train
    accelerator = make_accelerator(t.cpu, t.collective_timeout, **tracking.preflight(cfg))
    launched = accelerator.mixed_precision  # from an accelerate config / --mixed_precision
    if launched != "no" and launched != t.mixed_precision and accelerator.is_main_process:
        warnings.warn(f"accelerate's mixed_precision={launched} is not used; precision is train.mixed_precision="
                      f"{t.mixed_precision} (set train.mixed_precision={launched} to use it)", stacklevel=stacklevel)
    set_seed(t.seed)
    if t.tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def backbone_for(cfg: Config, device: torch.device, backbone=None):
    """``backbone``, else ``model.path`` loaded, on ``device``, caching the frozen text encoders' conditioning
    (``model.offload_text_encoders``: the SD3 and FLUX families keep theirs on the CPU between encodings)."""
    m = cfg.model
    backbone = backbone or load_backbone(m.path, m.dtype, m.revision, m.resolution, attention=m.attention,
                                         height=cfg.sampler.height, width=cfg.sampler.width)
    if m.offload_text_encoders:
        if not hasattr(backbone, "offload_text_encoders"):
            raise FocusNFixError("model.offload_text_encoders is for the SD3 and FLUX families; this model's text "
                                 "encoders are small: remove the setting")
        backbone.offload_text_encoders = True
    backbone.to(device)
    backbone.cache_conditioning = True  # the text encoders are frozen during training
    return backbone


def optimizer_for(params: list[torch.Tensor], t: TrainConfig, device_type: str):
    """(AdamW on ``params``, its LR schedule, the fp16 loss scaler (off unless ``train.mixed_precision=fp16``)).

    Not accelerate.prepare(): its scheduler steps once per process per step, and its fp16 scaler and autocast
    are skipped on CPU. Precision is owned by the trainer (fp32 LoRA, autocast, GradScaler)."""
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                                  weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.lr_schedule, t.warmup_steps, t.steps))
    return optimizer, scheduler, torch.amp.GradScaler(device_type, enabled=t.mixed_precision == "fp16")


def autocast_for(mixed_precision: str, device_type: str):
    """``train.mixed_precision``: fp16/bf16 autocast of the forward passes (LoRA parameters stay float32).
    No cast cache: torch 2.8 (not 2.13) reuses a LoRA weight's cast made under no_grad (the first T - K steps)
    in the gradient-carrying steps, which then have no gradient; recasting the small LoRA weights is cheap."""
    return torch.autocast(device_type, dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16,
                          enabled=mixed_precision != "no", cache_enabled=False)
