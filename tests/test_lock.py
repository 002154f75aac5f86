"""The pinned environment is consistent: transformers' PEFT integration accepts the locked peft, and a
text-encoder LoRA made the documented diffusers way (``text_encoder.add_adapter``) saves and loads."""
from pathlib import Path

import torch
from packaging.version import Version

from focusnfix.backbones import load_backbone
from focusnfix.sampling import generate


def _locked(name: str) -> str:
    lock = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"
    pins = dict(line.split("==") for line in lock.read_text().splitlines() if "==" in line and not line.startswith("#"))
    return pins[name]


def test_locked_peft_satisfies_transformers_peft_floor():
    """transformers checks peft's version only when add_adapter runs (it is not a declared requirement)."""
    import peft
    import transformers
    from transformers.integrations.peft import MIN_PEFT_VERSION

    assert transformers.__version__ == _locked("transformers") and peft.__version__ == _locked("peft")
    assert Version(peft.__version__) >= Version(MIN_PEFT_VERSION)


def test_text_encoder_lora_the_diffusers_way_saves_and_loads(tiny_dir, tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from focusnfix.backbones.lora import load_lora_into

    backbone = load_backbone(str(tiny_dir))
    pipe = backbone.pipe
    before = generate(backbone, ["a red circle"], [1], steps=3)
    # as diffusers' train_text_to_image_lora / train_dreambooth_lora scripts add their LoRAs
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    pipe.text_encoder.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian",
                                             target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    tuned = generate(backbone, ["a red circle"], [1], steps=3)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "lora",
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder)))

    fresh = load_backbone(str(tiny_dir))
    load_lora_into(fresh.pipe, tmp_path / "lora")
    assert any("lora_" in n for n, _ in fresh.pipe.text_encoder.named_parameters())
    loaded = generate(fresh, ["a red circle"], [1], steps=3)
    assert (tuned - before).abs().max() > 1e-3  # the LoRAs change the images, so the comparison can fail
    # same modules and weights on both sides, the same operations: equal to float rounding of a 32 px image
    assert (loaded - tuned).abs().max() <= 1e-5
