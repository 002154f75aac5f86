"""Two CPU processes (gloo, torchrun): identical LoRA on every rank, equal to one process with the
same global batch, and checkpoint save + resume under two processes; replicated and sharded (FSDP)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import base_overrides
from safetensors.torch import load_file

from focusnfix.config import load_config
from focusnfix.backbones.lora import lora_state
from focusnfix.training.trainer import Trainer

DRIVER = Path(__file__).with_name("dist_driver.py")


def free_port() -> int:
    """A loopback port free right now (fixed ports collide when two test runs share a machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], tmp_path: Path, port: int | None = None) -> None:
    """Two gloo ranks of dist_driver.py; ``port`` None picks a free one (the same port for a resumed
    run is not needed: each launch is its own job)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(DRIVER.parent)}
    port = port or free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(DRIVER), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def test_two_processes_match_one_process_and_resume(tiny_dir, tmp_path):
    out = tmp_path / "dist"
    common = {"train.batch_size": 1, "train.cpu": True, "train.checkpoint_every": 2, "sampler.k_max": 3,
              "train.warmup_steps": 3}  # the LR schedule advances once per step on every rank
    torchrun(base_overrides(tiny_dir, out, **common, **{"train.steps": 2}), tmp_path)
    ranks = [load_file(out / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(ranks[0][n].equal(ranks[1][n]) for n in ranks[0])
    assert (out / "checkpoints" / "step-000002" / "manifest.json").is_file()

    torchrun([*base_overrides(tiny_dir, out, **common, **{"train.steps": 4}), "--resume"], tmp_path)
    ranks = [load_file(out / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(ranks[0][n].equal(ranks[1][n]) for n in ranks[0])

    # one process, same global batch (2 trajectories per step as 1 x 2 accumulation), same 4 steps
    single = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "single", **common,
                                                      **{"train.steps": 4, "train.grad_accum": 2})))
    single.train(progress=False)
    ref = lora_state(single.backbone.unet)
    assert max((ref[n] - ranks[0][n]).abs().max().item() for n in ref) <= 1e-5
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # one writer (the main process), no duplicated steps after resume


def test_fsdp_shards_the_unet_and_matches_one_process(tiny_dir, tmp_path):
    """train.fsdp=true: each rank holds half of the UNet's weights; ranks stay in step when one rank
    finds its reference in the cache and the other does not (with seed_pool=2 that happens at step 2;
    without the trainer's lockstep the run crashes there); gradient checkpointing (blocks are gathered
    again in backward); checkpoint + resume; same LoRA as one process without checkpointing.

    Not bit for bit like the replicated test (there each rank runs the single process's micro-batch
    arithmetic and the mean of two halves is exact): the gathered weights live in other buffers, so
    kernels round differently (gradients equal to ~1e-6 relative). Adam's update lr * m / (sqrt(v) + eps)
    changes by up to lr / eps per unit of gradient: 1e6 at the default eps 1e-8, which turned those
    differences into 1e-5 .. 2.3e-5 in the LoRA depending on the CPU kernels. With adam_eps 1e-4 (here
    and in the single process) that factor is 100: differences of gradient elements of 1e-8 give
    ~1e-6 over these steps (measured 1.9e-6 .. 4e-6), so 1e-4 holds on any kernel, while a lost
    optimizer state, LR step or rank's gradient on resume is off by O(lr) = 1e-2. The LoRA moves by
    ~2e-2 over these steps."""
    out = tmp_path / "fsdp"
    common = {"train.batch_size": 1, "train.cpu": True, "train.checkpoint_every": 2, "sampler.k_max": 3,
              "data.seed_pool": 2, "train.warmup_steps": 3, "train.adam_eps": 1e-4}
    # recompute gathers again
    sharded = {"train.fsdp": True, "sampler.grad_checkpointing": True, "sampler.vae_checkpointing": True}
    torchrun(base_overrides(tiny_dir, out, **common, **sharded, **{"train.steps": 2}), tmp_path)
    torchrun([*base_overrides(tiny_dir, out, **common, **sharded, **{"train.steps": 4}), "--resume"], tmp_path)
    for r in (0, 1):
        counts = json.loads((out / f"rank{r}.json").read_text())
        assert counts["held"] <= 0.51 * counts["total"], counts
    ranks = [load_file(out / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(ranks[0][n].equal(ranks[1][n]) for n in ranks[0])
    saved = load_file(out / "checkpoints" / "step-000004" / "lora.safetensors")
    assert all(saved[n].equal(ranks[0][n]) for n in saved)  # the gathered state, not one shard
    exported = load_file(out / "lora" / "pytorch_lora_weights.safetensors")  # diffusers names, same tensors
    key = lambda t: (tuple(t.shape), round(t.double().sum().item(), 9))  # noqa: E731
    assert sorted(map(key, exported.values())) == sorted(map(key, ranks[0].values()))

    single = Trainer(load_config(None, base_overrides(tiny_dir, tmp_path / "single", **common,
                                                      **{"train.steps": 4, "train.grad_accum": 2})))
    single.train(progress=False)
    ref = lora_state(single.backbone.unet)
    moved = max(ref[n].abs().max().item() for n in ref if "lora_B" in n)
    assert moved > 1e-2
    assert max((ref[n] - ranks[0][n]).abs().max().item() for n in ref) <= 1e-4


def test_accelerate_configs_load_and_reshard_setting_is_read():
    from types import SimpleNamespace

    from accelerate.commands.config.config_args import load_config_from_file
    from torch.distributed.fsdp import ShardingStrategy

    from focusnfix.backbones.sharding import reshard_after_forward

    folder = Path(__file__).parents[1] / "configs" / "accelerate"
    # unknown keys raise
    kinds = {p.name: load_config_from_file(str(p)).distributed_type.value for p in folder.glob("*.yaml")}
    assert kinds == {"ddp-1node.yaml": "MULTI_GPU", "ddp-2nodes.yaml": "MULTI_GPU", "fsdp-1node.yaml": "FSDP"}
    assert reshard_after_forward(None) and reshard_after_forward(SimpleNamespace(reshard_after_forward=True))
    assert not reshard_after_forward(SimpleNamespace(reshard_after_forward=False))
    assert not reshard_after_forward(SimpleNamespace(reshard_after_forward=ShardingStrategy.SHARD_GRAD_OP))
    assert reshard_after_forward(SimpleNamespace(reshard_after_forward="FULL_SHARD"))
