"""Optional ``torch.compile`` of the UNet (``model.compile``), done so that it stays correct.

Three things were found by experiment on the tiny model (torch 2.13, CPU inductor) and are handled here:

* Inductor's *layout optimization* (activations of convolutions switched to channels-last) gives a
  wrong backward for diffusers' ``UpBlock2D`` (a ResnetBlock2D followed by Upsample2D's nearest
  interpolation and conv): the forward agrees with eager to 1e-6, but the gradient flowing back through
  that block is exactly zero, so LoRA gradients were off by 50-100 %. ``layout_optimization=False``
  makes forward and backward agree with eager (relative error ~1e-5). The LoRA on/off switch used for
  the frozen reference pass is *not* a problem: dynamo guards peft's ``disable_adapters`` flag and
  recompiles (checked: adapters-off output equals eager to 1e-6).
* Focus-N-Fix's first step from a fresh LoRA (B = 0) is not comparable bit for bit: eager Î and Î0
  are then identical and the constraint ‖(1 − M)(Î − Î0)‖ has gradient 0, while the compiled
  adapters-on and adapters-off graphs differ by ~1e-6, which makes that gradient a unit vector of
  rounding noise (weight λ) that Adam's first step follows. Any other change of kernels does the same
  (tests/test_compile.py shows a 1e-6 perturbation of Î0 moving the LoRA by > 1e-3 in eager); from a
  non-zero LoRA, compiled and eager training agree (gradients within 1e-4 relative).

* Forward hooks registered after compiling are not seen: dynamo does not guard on module hooks by
  default (``skip_nnmodule_hook_guards``), so the compiled graph silently ignores them (measured: a
  per-row adapter hook changed nothing, 0.43 relative error). The trainer therefore turns the
  batched reference pass (``train.batch_reference``, per-row hooks) off under ``model.compile``.

The compiled UNet keeps its parameters and names, so LoRA state, checkpoints and ``save_lora`` are
unchanged; only ``unet.forward`` is replaced.
"""
from __future__ import annotations

import os

import torch

from ..errors import FocusNFixError

# Inductor settings used for the UNet; see the module docstring for why layout optimization is off.
INDUCTOR_OPTIONS = {"layout_optimization": False}
# Under ATEN_CPU_CAPABILITY=default (ATen's baseline kernels, as on CPUs without AVX2) inductor (torch 2.13) still
# emits at::vec C++ that then fails to compile ("'at::vec' has not been declared"): scalar C++ kernels instead.
SCALAR_CPP = {"cpp.simdlen": 1}
_HINT = "set model.compile=false to run without torch.compile"


def compile_unet(unet) -> None:
    """Compile ``unet.forward`` in place with inductor (lazily: the work happens on the first calls,
    once per grad mode, adapter state and input shape). A failure to compile becomes a one-line
    :class:`FocusNFixError` that says how to turn compiling off."""
    if getattr(unet, "_focusnfix_compiled", False):
        return
    try:
        scalar = os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "default"
        compiled = torch.compile(unet.forward, options={**INDUCTOR_OPTIONS, **(SCALAR_CPP if scalar else {})})
    except Exception as e:  # e.g. torch.compile unsupported on this Python/platform
        raise FocusNFixError(f"torch.compile is not available here ({_first_line(e)}); {_HINT}") from None

    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except _compile_errors() as e:
            raise FocusNFixError(f"torch.compile of the UNet failed ({_first_line(e)}); {_HINT}") from None

    unet.forward = forward
    unet._focusnfix_compiled = True


def _compile_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "compiling failed" (missing C++ compiler, unsupported op, ...), not a model error."""
    import torch._dynamo.exc as dynamo_exc

    errors: list[type[BaseException]] = [dynamo_exc.BackendCompilerFailed, dynamo_exc.InternalTorchDynamoError]
    try:
        from torch._inductor.exc import InductorError

        errors.append(InductorError)
    except ImportError:
        pass
    return tuple(errors)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
