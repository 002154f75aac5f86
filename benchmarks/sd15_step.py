"""Benchmark (d): one Focus-N-Fix training step on an SD1.5-architecture UNet + VAE (random weights,
real sizes) at 512 px, batch 1, K = 1 and 2, with and without gradient checkpointing and bf16.

    python benchmarks/sd15_step.py                       # GPU: the real measurement
    python benchmarks/sd15_step.py --small --device cpu  # CPU smoke path (tiny widths, 64 px), used by tests
    python benchmarks/sd15_step.py --model PATH --variants k2-ckpt-bf16 --offload-text-encoders --out ...
                                                         # a real pipeline folder (e.g. SD3.5 Medium, FLUX.1-dev)

Reports seconds per step (median of --repeats after one warm-up) and peak memory: CUDA
``max_memory_allocated`` on a GPU, peak RSS of the process on CPU. Writes JSON.
"""
from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402


def build_pipeline(small: bool, seed: int = 0):
    """SD1.5 architecture (diffusers' default UNet2DConditionModel / SD VAE / CLIP ViT-L text encoder sizes)
    with random weights; ``small`` shrinks every width for a CPU smoke run."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from focusnfix.backbones.tiny import write_clip_tokenizer

    torch.manual_seed(seed)
    if small:
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64, 64, 64), cross_attention_dim=64,
                                    attention_head_dim=8, norm_num_groups=16, layers_per_block=1)
        vae = AutoencoderKL(block_out_channels=(16, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8,
                            layers_per_block=1)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    else:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the SD1.5 UNet (860M parameters)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                            sample_size=512)
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    tok_dir = write_clip_tokenizer(tempfile.mkdtemp(prefix="sd15-tok-"), max_length=77)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, **text,
                                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                           pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def run_variant(args, k: int, ckpt: bool, bf16: bool) -> dict:
    import torch

    from focusnfix.backbones import SDBackbone
    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer

    device = args.device
    if args.model:  # a real pipeline of any family; frozen weights in bf16 for the bf16 variants (the documented plan)
        from focusnfix.backbones import load_backbone

        backbone = load_backbone(args.model, "bfloat16" if bf16 else "float32", resolution=args.resolution)
        backbone.offload_text_encoders = args.offload_text_encoders
    else:
        backbone = SDBackbone(build_pipeline(args.small), resolution=args.resolution)
    backbone.to(device)
    cfg = load_config(None, [
        "model.path=in-memory", "data.prompts=[a photo of a person at the beach]",
        f"sampler.steps={args.sampler_steps}",
        f"sampler.k={k}", f"sampler.grad_checkpointing={ckpt}", f"sampler.vae_checkpointing={ckpt}",
        f"train.mixed_precision={'bf16' if bf16 else 'no'}", f"train.cpu={device == 'cpu'}", "lora.rank=64",
        "reward.name=color", "mask.threshold=0.3", f"train.output_dir={tempfile.mkdtemp(prefix='sd15-run-')}",
        "train.reference_cache=off",
    ])
    trainer = Trainer(cfg, backbone=backbone)
    trainer.train_step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        trainer.train_step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = ((torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"k": k, "checkpointing": ckpt, "bf16": bf16, "median_s": statistics.median(times), "n": len(times),
            "peak_mb": peak,
            "peak_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "process peak RSS"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="tiny widths (CPU smoke run)")
    p.add_argument("--resolution", type=int, default=None,
                   help="px (default 512, or 64 with --small, or the --model's own)")
    p.add_argument("--model",
                   help="a pipeline folder of any supported family (SD, SDXL, SD3, FLUX) instead of the random SD1.5")
    p.add_argument("--offload-text-encoders", action="store_true",
                   help="SD3/FLUX: text encoders on the CPU between encodings")
    p.add_argument("--sampler-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default="all", help="all, or a comma-separated list, e.g. k2-ckpt-bf16,k2-nockpt-bf16")
    p.add_argument("--out", default="benchmarks/results/sd15_step.json")
    args = p.parse_args(argv)
    import torch

    if not args.model:
        args.resolution = args.resolution or (64 if args.small else 512)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu (and --small for a quick check)", file=sys.stderr)
        return 2
    rows = []
    for k, ckpt, bf16 in itertools.product((1, 2), (False, True), (False, True)):
        name = f"k{k}-{'ckpt' if ckpt else 'nockpt'}-{'bf16' if bf16 else 'fp32'}"
        if args.variants != "all" and name not in args.variants.split(","):
            continue
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        rows.append({"variant": name, **run_variant(args, k, ckpt, bf16)})
        r = rows[-1]
        print(f"{name:22s} {r['median_s']:9.3f} s/step  peak {r['peak_mb']:9.1f} MB ({r['peak_kind']})", flush=True)
    write_result(args.out, {"benchmark": "sd15_step", "settings": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
