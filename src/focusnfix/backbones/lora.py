"""LoRA on the UNet's attention projections via peft, saved in diffusers format.

θ = θ0 + LoRA. The frozen reference θ0 is the same UNet with adapters disabled (no second copy).
"""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ..errors import FocusNFixError, short_path

ADAPTER = "default"


def add_lora(unet, rank: int, alpha: float | None = None,
             targets: list[str] | tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
             dropout: float = 0.0, use_dora: bool = False) -> list[torch.nn.Parameter]:
    """Add a LoRA adapter (B initialised to zero, so θ = θ0 at the start); return its parameters (float32).

    ``dropout`` > 0 drops LoRA inputs in gradient-carrying calls only (:class:`GradOnlyDropout`). ``use_dora``:
    peft's DoRA (Liu et al. 2024): W' = m (W + BA) / ||W + BA||_c, with the magnitude m (initialised to ||W||_c,
    so θ = θ0 at the start too) a trainable ``lora_magnitude_vector`` beside A and B."""
    from peft import LoraConfig

    # peft's rule: a target names every module whose qualified name equals it or ends with "." + it
    names = [n for n, _ in unet.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise FocusNFixError(f"lora.targets {missing} match no module of the denoiser (a target matches the modules "
                             "whose qualified names end with it); the attention projections are "
                             "to_q, to_k, to_v, to_out.0 (SD3/FLUX also add_q_proj, add_k_proj, add_v_proj, "
                             "to_add_out)")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=list(targets),
                        lora_dropout=dropout, init_lora_weights="gaussian", use_dora=use_dora)
    unet.add_adapter(config, adapter_name=ADAPTER)
    if dropout > 0:
        for module in unet.modules():
            if hasattr(module, "lora_dropout") and ADAPTER in module.lora_dropout:
                module.lora_dropout[ADAPTER] = GradOnlyDropout(dropout)
    params = list(lora_parameters(unet).values())
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


class GradOnlyDropout(torch.nn.Module):
    """LoRA dropout that acts only in gradient-carrying calls (DRaFT's last K steps of Î).

    peft's ``nn.Dropout`` follows the module's training flag, so it would also drop in the no-grad
    prefix, the batched reference rows, previews and inference, and the number of random draws would
    depend on reference-cache hits. Here a call with gradients disabled is the identity, so a training
    step draws a fixed number of numbers from torch's global generator, which the trainer reseeds from
    ``(train.seed, step, rank)`` at every step (resume is exact; gradient checkpointing restores that
    generator when it recomputes a step, so the recomputed masks are the same)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return x
        return torch.nn.functional.dropout(x, self.p, training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def lora_parameters(unet) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters by name (on a sharded UNet, the sharded parameters)."""
    return {n: p for n, p in unet.named_parameters() if "lora_" in n}


@contextmanager
def adapters_disabled(unet) -> Iterator[None]:
    """Run the frozen reference model θ0: the same UNet with its LoRA adapters switched off."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


@contextmanager
def adapters_per_row(unet, active: torch.Tensor) -> Iterator[None]:
    """Per-sample adapters: batch row i runs the fine-tuned model θ if ``active[i]`` is 1 and the frozen
    θ0 if it is 0, so one UNet call can serve both (the trainer batches the reference pass Î0 with
    the trained pass Î this way).

    Every LoRA branch's output is multiplied row-wise by ``active`` (a UNet is batch-first in every
    layer, attention projections included). A batch of m·len(active) rows (classifier-free guidance
    stacks [uncond; cond]) repeats ``active`` m times. A row with 0 gets base(x) + 0, exactly θ0.

    ``active`` moves to the UNet's device once, and each (dtype, batch, rank) layout of the row factor is
    made once and shared by every layer: no host-to-device copy per layer call.

    DoRA (``lora.use_dora``): its layer adds ``(m / ||W + BA||_c - 1) W x + (m / ||W + BA||_c) B A x`` to the
    base output, computed by the magnitude module (which also runs B on an identity matrix for BA): there that
    module's output is multiplied instead, so a row with 0 is again base(x) + 0."""
    device = next((p.device for n, p in unet.named_parameters() if "lora_" in n), None)
    active = active.to(device) if device is not None else active
    layouts: dict[tuple, torch.Tensor] = {}

    def route(module, inputs, output):
        key = (output.device, output.dtype, output.shape[0], output.ndim)
        rows = layouts.get(key)
        if rows is None:
            rows = active.to(output.device, output.dtype).repeat(output.shape[0] // active.numel())
            rows = layouts[key] = rows.view(-1, *[1] * (output.ndim - 1))
        return output * rows

    modules = list(unet.named_modules())
    dora = [m for n, m in modules if n.endswith(f"lora_magnitude_vector.{ADAPTER}")]  # DoRA: its whole delta
    lora = [m for n, m in modules if n.endswith(f"lora_B.{ADAPTER}")]
    handles = [m.register_forward_hook(route) for m in dora or lora]
    if not handles:
        raise FocusNFixError("adapters_per_row: this UNet has no LoRA adapter")
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def lora_state(unet) -> dict[str, torch.Tensor]:
    """The trainable LoRA tensors by parameter name (for checkpoints), detached copies on CPU.

    On a sharded UNet (FSDP) the tensors are gathered: every rank must call this."""
    from .sharding import full

    return {n: full(p.detach()).cpu().clone() for n, p in lora_parameters(unet).items()}


def load_lora_state(unet, state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`lora_state`; the names and shapes must match exactly."""
    from .sharding import shard_like

    params = lora_parameters(unet)
    if set(params) != set(state):
        extra, missing = sorted(set(state) - set(params))[:3], sorted(set(params) - set(state))[:3]
        raise FocusNFixError(f"LoRA state does not match this model (unexpected {extra}, missing {missing}); "
                             "was it trained on another architecture or LoRA config?")
    with torch.no_grad():
        for n, p in params.items():
            if p.shape != state[n].shape:
                raise FocusNFixError(f"LoRA tensor {n} has shape {tuple(state[n].shape)}, "
                                     f"model expects {tuple(p.shape)}")
            p.copy_(shard_like(p, state[n]))


def save_lora(unet, folder: str | Path, rank: int, alpha: float | None, targets: list[str], pipeline_cls=None,
              state: dict[str, torch.Tensor] | None = None) -> Path:
    """Save in diffusers format (``pytorch_lora_weights.safetensors``) so that
    ``pipeline_cls.load_lora_weights(folder)`` loads it (default ``StableDiffusionPipeline``; pass the
    family's pipeline class, e.g. ``StableDiffusionXLPipeline``, ``StableDiffusion3Pipeline``,
    ``FluxPipeline``); rank/alpha are recorded in the file's adapter metadata and in
    ``lora_config.json``. ``unet`` is the denoiser: a UNet is saved under the ``unet`` prefix (in
    diffusers' key format; peft's when targets go beyond the attention projections, which diffusers' format does
    not rename), a transformer under ``transformer`` (peft's format), as diffusers' own LoRA
    training scripts save them. ``state`` (from :func:`lora_state`) replaces reading the denoiser's
    tensors; a sharded denoiser must pass it, gathered on every rank. A DoRA adapter (``lora_magnitude_vector``
    tensors) is recorded in the metadata as ``use_dora``, which diffusers' loader needs to rebuild it."""
    import inspect

    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cls = pipeline_cls or StableDiffusionPipeline
    prefix = "unet" if "unet_lora_layers" in inspect.signature(cls.save_lora_weights).parameters else "transformer"
    layers = get_peft_model_state_dict(unet, state_dict=state, adapter_name=ADAPTER)
    if prefix == "unet":
        converted = convert_state_dict_to_diffusers(layers)  # renames the attention projections' tensors only
        # diffusers' loader converts a file only when its first key lacks peft's lora_A: a file mixing both forms
        # (targets beyond the attention projections, e.g. proj_in) would load in part. Then peft's names for all.
        if not any(".lora_A." in k or ".lora_B." in k for k in converted):
            layers = converted
    layers = {k: v.detach().cpu().contiguous() for k, v in layers.items()}
    use_dora = any("lora_magnitude_vector" in k for k in layers)
    # rank_pattern / alpha_pattern (empty: one rank and alpha for every layer): diffusers 0.34 and later read
    # them from the metadata on load (a KeyError without them), as in the metadata of diffusers' own scripts
    meta = {"r": rank, "lora_alpha": alpha if alpha is not None else rank, "target_modules": list(targets),
            "rank_pattern": {}, "alpha_pattern": {}, **({"use_dora": True} if use_dora else {})}
    cls.save_lora_weights(folder, **{f"{prefix}_lora_layers": layers, f"{prefix}_lora_adapter_metadata": meta})
    (folder / "lora_config.json").write_text(json.dumps(meta, indent=2))
    return folder


LORA_FILE = "pytorch_lora_weights.safetensors"


def find_lora_file(path: str | Path) -> Path:
    """The LoRA weights file for ``path``: a ``.safetensors`` file (any name), a run folder (its
    ``lora/``), or a LoRA folder holding ``pytorch_lora_weights.safetensors`` or exactly one other
    ``.safetensors`` file. One-line :class:`FocusNFixError` otherwise."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise FocusNFixError(f"LoRA file {str(path)!r} is not a .safetensors file (pickled weights are refused)")
        return path
    if not path.is_dir():
        raise FocusNFixError(f"LoRA {str(path)!r} does not exist; "
                             "give a run folder, a LoRA folder or a .safetensors file")
    folder = path / "lora" if (path / "lora").is_dir() else path
    if (folder / LORA_FILE).is_file():
        return folder / LORA_FILE
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FocusNFixError(f"{str(path)!r} is neither a run folder with lora/ nor a LoRA folder "
                             f"(no {LORA_FILE} or other .safetensors file in it)")
    names = ", ".join(f.name for f in found[:4])
    raise FocusNFixError(f"LoRA folder {str(folder)!r} holds several .safetensors files ({names}); "
                         "give the file itself")


def check_lora_file(path: str | Path) -> Path:
    """:func:`find_lora_file`, then read every tensor: a truncated file or one holding NaN/Inf weights (a
    diverged run's) is a one-line :class:`FocusNFixError` before any model is loaded."""
    from safetensors import safe_open

    weights = find_lora_file(path)
    try:
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise FocusNFixError(f"LoRA {short_path(weights, 40)}: tensor {short_path(key, 110)} holds NaN/Inf "
                                         "weights (a diverged run's); use an earlier checkpoint or retrain with a "
                                         "lower train.lr")
    except FocusNFixError:
        raise
    except Exception as e:  # safetensors' own error types: a header or size that does not add up
        detail = " ".join(str(e).split())[:100] or type(e).__name__
        raise FocusNFixError(f"LoRA {short_path(weights)} cannot be loaded ({detail}); "
                             "is the file truncated?") from None
    return weights


def load_lora_into(pipe, folder: str | Path) -> None:
    """``pipe.load_lora_weights`` for a run folder, a LoRA folder or a LoRA ``.safetensors`` file (see
    :func:`find_lora_file`), with one-line errors for missing, truncated, non-finite or mismatched files."""
    import diffusers

    weights = check_lora_file(folder)
    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity(diffusers.utils.logging.CRITICAL)  # we report errors ourselves
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(weights.parent), weight_name=weights.name)
        partial = [w for w in caught if "inconsistency" in str(w.message)]
        if partial:
            raise ValueError("its tensors match only part of this model's attention layers")
    except Exception as e:  # safetensors, peft and torch raise many types; all mean "this file does not fit"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "size mismatch" in ln), lines[0] if lines else type(e).__name__)
        raise FocusNFixError(f"LoRA {str(folder)!r} cannot be loaded into this model ({detail}); "
                             "was it trained on another architecture, or is the file truncated?") from None
    finally:
        diffusers.utils.logging.set_verbosity(level)
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    if not any("lora_" in n for n, _ in denoiser.named_parameters()):
        raise FocusNFixError(f"LoRA {str(folder)!r} holds no {type(denoiser).__name__} LoRA tensors "
                             "that match this model; "
                             "was it trained for another model family?")
