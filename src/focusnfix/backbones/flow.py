"""What the rectified-flow transformer families (SD3/3.5, FLUX.1) share: the transformer as denoiser, the
pipeline's own ``FlowMatchEulerDiscreteScheduler`` driven by the Euler step rule, velocity prediction,
and text encoders that can be moved off the accelerator after encoding.

Rectified flow (Esser et al. 2024, "Scaling Rectified Flow Transformers"): x_σ = (1 - σ) x0 + σ ε,
the model predicts v = ε - x0, and sampling integrates dx/dσ = v from σ = 1 to 0.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..sampling import Conditioning, FlowEulerStep, FlowSDEStep
from .sd import SDBackbone

# attention projections of the image stream and of the text (context) stream of the joint blocks
FLOW_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


class FlowBackbone(SDBackbone):
    """Base of the flow-matching families; subclasses give ``_encode``, ``model_fn`` and ``schedule``."""

    denoiser = "transformer"
    lora_targets = FLOW_LORA_TARGETS
    default_sample_size = 128  # latent px (1024 px images), the pipelines' default
    text_encoder_names = ("text_encoder", "text_encoder_2")
    max_shift_default = 1.15  # FluxPipeline's default when the scheduler config has no max_shift

    def __init__(self, pipe, resolution: int | None = None, height: int | None = None, width: int | None = None):
        super().__init__(pipe, resolution=resolution, height=height, width=width)
        self.offload_text_encoders = False  # model.offload_text_encoders: encoders live on the CPU between encodings

    @staticmethod
    def make_scheduler(config):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(config)

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * self.unet.config.patch_size

    def step_rule(self, steps: int, device: torch.device) -> FlowEulerStep:
        """Euler on the flow ODE over the sigmas of the family's schedule for T = ``steps`` steps on ``device``
        (:class:`~focusnfix.sampling.FlowEulerStep`)."""
        return FlowEulerStep(self.scheduler, self.schedule(steps), device)

    def stochastic_rule(self, noise_level: float, steps: int, device: torch.device) -> FlowSDEStep:
        """The policy of GRPO for T = ``steps`` steps on ``device``: the marginal-preserving SDE of Flow-GRPO
        (:class:`~focusnfix.sampling.FlowSDEStep`)."""
        return FlowSDEStep(self.scheduler, self.schedule(steps), noise_level, device)

    def schedule(self, steps: int) -> dict:
        """``set_timesteps`` keywords as the family's pipeline passes them (default: T steps, with the
        resolution-dependent shift ``mu`` when the scheduler config asks for dynamic shifting)."""
        kwargs: dict = {"num_inference_steps": steps}
        if self.scheduler.config.get("use_dynamic_shifting", False):
            kwargs["mu"] = self.shift_mu()
        return kwargs

    def image_seq_len(self) -> int:
        """Transformer tokens per image: latent pixels over patch area."""
        f = self.vae_scale_factor * self.unet.config.patch_size
        return (self.height // f) * (self.width // f)

    def shift_mu(self) -> float:
        """μ of the resolution-dependent shift: linear in the token count between two config points
        (FLUX.1 report; diffusers' ``calculate_shift``)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = self.scheduler.config
        return calculate_shift(self.image_seq_len(), c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                               c.get("base_shift", 0.5), c.get("max_shift", self.max_shift_default))

    # -- text encoders: on the accelerator only while encoding ------------------------------------
    def _text_encoders(self) -> list[torch.nn.Module]:
        return [m for m in (getattr(self.pipe, n, None) for n in self.text_encoder_names) if m is not None]

    def to(self, device: torch.device | str) -> "FlowBackbone":
        self.pipe.to(device)
        if self.offload_text_encoders:
            for module in self._text_encoders():
                module.to("cpu")
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def encode(self, prompts: Sequence[str], negative_prompt: str = "", guidance_scale: float = 7.5) -> Conditioning:
        if not self.offload_text_encoders or self.device.type == "cpu":
            return super().encode(prompts, negative_prompt, guidance_scale)
        encoders = self._text_encoders()
        for module in encoders:
            module.to(self.device)
        try:
            return super().encode(prompts, negative_prompt, guidance_scale)
        finally:
            for module in encoders:
                module.to("cpu")
