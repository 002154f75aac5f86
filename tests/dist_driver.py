"""Launched by tests with `torchrun --nproc_per_node 2`: trains through the Trainer API and writes
each rank's final LoRA tensors to OUT/rank{r}.safetensors so the test can compare ranks, and the
number of UNet weights this rank holds to OUT/rank{r}.json (half of them each when sharded)."""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from focusnfix.config import load_config  # noqa: E402
from focusnfix.backbones.lora import lora_state  # noqa: E402
from focusnfix.backbones.sharding import local  # noqa: E402
from focusnfix.training.trainer import Trainer  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    resume = "--resume" in sys.argv
    overrides = [a for a in sys.argv[1:] if a != "--resume"]
    trainer = Trainer(load_config(None, overrides))
    trainer.train(resume=resume, progress=False)
    rank = trainer.accelerator.process_index
    out = trainer.cfg.train.output_dir
    save_file(lora_state(trainer.backbone.unet), os.path.join(out, f"rank{rank}.safetensors"))
    held = sum(local(p).numel() for p in trainer.backbone.unet.parameters())
    total = sum(p.numel() for p in trainer.backbone.unet.parameters())
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"held": held, "total": total}, f)
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
