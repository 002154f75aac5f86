"""One timed training run for benchmark (b), ours (focusnfix DRaFT-K) or TRL's AlignPropTrainer.

Run by ``benchmarks/trl_alignprop.py``, each run in a fresh process so peak-memory numbers are per
run:

    .venv/bin/python              benchmarks/trl_worker.py --side ours --model DIR [options]
    benchmarks/.venv-trl/bin/python benchmarks/trl_worker.py --side trl  --model DIR [options]

The TRL side must not import focusnfix (it runs in its own virtualenv), and the reward below is the
one function both sides use. Prints one JSON object as the last line of stdout:
``times`` (seconds per timed optimizer step; the first step is a warm-up and not timed), the peak
RSS of the whole process (``getrusage(RUSAGE_SELF).ru_maxrss``), and the RSS sampled by a
background thread (``/proc/self/statm`` every ``--rss-interval`` s) once the model, LoRA and
optimizer are built (before the warm-up step) and at its highest during the warm-up and timed steps.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

PAGE = os.sysconf("SC_PAGE_SIZE")


def redness(images):
    """The differentiable reward of both sides: mean of R - (G + B) / 2 over the image, ``(B,)``.

    ``images`` is ``(B, 3, H, W)`` in [0, 1] (both pipelines decode to that range)."""
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    return (r - 0.5 * (g + b)).mean(dim=(1, 2))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class RSSSampler:
    """Highest RSS seen by a daemon thread polling ``/proc/self/statm`` (no tracemalloc)."""

    def __init__(self, interval: float):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# -- ours ---------------------------------------------------------------------------------------
def setup_ours(args, tmp: str):
    """A focusnfix Trainer (method draft = DRaFT-K) with the shared reward; returns a step function."""
    from focusnfix.config import load_config
    from focusnfix.rewards import RewardOutput
    from focusnfix.training.trainer import Trainer

    class Redness:
        name = "redness"
        differentiable = True

        def __call__(self, images, prompts):
            return RewardOutput(score=redness(images))

    overrides = [
        f"model.path={args.model}", "method=draft", f"sampler.steps={args.sampler_steps}", f"sampler.k={args.k}",
        f"sampler.guidance_scale={args.guidance}", f"sampler.grad_checkpointing={args.grad_checkpointing}",
        f"train.batch_size={args.batch}", "train.grad_accum=1", f"lora.rank={args.rank}", f"lora.alpha={args.rank}",
        f"train.lr={args.lr}", "train.weight_decay=0.0", "train.adam_beta1=0.9", "train.adam_beta2=0.999",
        "train.adam_eps=1e-8", "train.max_grad_norm=1.0", "train.mixed_precision=no", "train.lr_schedule=constant",
        "train.steps=1000000", f"train.seed={args.seed}", "train.reference_cache=off",
        "data.prompts=[" + ", ".join(args.prompts) + "]", f"train.output_dir={tmp}/run",
    ]
    trainer = Trainer(load_config(None, overrides), reward=Redness())

    def step():
        return trainer.train_step()["reward"]

    step.trainer = trainer
    return step


# -- TRL ------------------------------------------------------------------------------------------
def trl_settings(args, tmp: str) -> dict:
    """Every AlignPropConfig field we set (the rest keep TRL's defaults and are unused here)."""
    cut = args.sampler_steps - args.k  # UNet outputs of steps i < cut are detached: the last K keep gradient
    return dict(
        exp_name="bench", run_name="", seed=args.seed, log_with=None, logdir=f"{tmp}/logs",
        project_kwargs={"project_dir": f"{tmp}/project"}, tracker_project_name="trl",
        num_epochs=1, save_freq=10**9, num_checkpoint_limit=1, resume_from="", log_image_freq=10**9,
        mixed_precision="no", allow_tf32=False,
        sample_num_steps=args.sampler_steps, sample_eta=0.0, sample_guidance_scale=args.guidance,
        train_batch_size=args.batch, train_use_8bit_adam=False, train_learning_rate=args.lr,
        train_adam_beta1=0.9, train_adam_beta2=0.999, train_adam_weight_decay=0.0, train_adam_epsilon=1e-8,
        train_gradient_accumulation_steps=1, train_max_grad_norm=1.0, negative_prompts=None,
        truncated_backprop_rand=False, truncated_backprop_timestep=cut, truncated_rand_backprop_minmax=(cut, cut),
        push_to_hub=False,
    )


def setup_trl(args, tmp: str):
    """TRL's AlignPropTrainer on DefaultDDPOStableDiffusionPipeline (LoRA r=4, alpha=4 are fixed there)."""
    import warnings

    warnings.filterwarnings("ignore")
    from trl import AlignPropConfig, AlignPropTrainer, DefaultDDPOStableDiffusionPipeline

    if args.rank != 4:
        raise SystemExit("TRL's DefaultDDPOStableDiffusionPipeline hard-codes LoRA r=4, alpha=4: use --rank 4")
    if args.grad_checkpointing:
        raise SystemExit("--grad-checkpointing is an option of our side only (TRL always checkpoints)")
    from accelerate import PartialState

    # TRL logs through accelerate's logger, which raises if no accelerate state exists yet; the
    # pipeline constructor logs "no LoRA weights found" (right: TRL adds a fresh LoRA in get_trainable_layers)
    PartialState()
    pipe = DefaultDDPOStableDiffusionPipeline(args.model, use_lora=True)
    rng = random.Random(args.seed)

    def prompt_fn():
        return rng.choice(args.prompts), {}

    def reward_fn(images, prompts, metadata):
        return redness(images), {}

    def image_hook(prompt_image_pairs, global_step, tracker):  # never called: log_image_freq is huge
        pass

    trainer = AlignPropTrainer(AlignPropConfig(**trl_settings(args, tmp)), reward_fn, prompt_fn, pipe, image_hook)
    pipe.set_progress_bar_config(disable=True)  # TRL turns diffusers' per-timestep tqdm bar on; ours has none
    state = {"global_step": 0}
    last = {}

    orig = trainer.compute_rewards

    def compute_rewards(pairs):
        r = orig(pairs)
        last["reward"] = float(r.detach().mean())
        return r

    trainer.compute_rewards = compute_rewards

    def step():
        # epoch=0: AlignPropTrainer.step saves a checkpoint when epoch != 0 and epoch % save_freq == 0
        state["global_step"] = trainer.step(0, state["global_step"])
        return last["reward"]

    step.trainer, step.pipe = trainer, pipe
    return step


def instrument_trl(step, meter):
    """Charge TRL's step to components as ``_tensor_memory.instrument`` does ours (UNet calls, VAE decode,
    reward; end of forward = rewards computed; backward; optimizer)."""
    import torch
    from _tensor_memory import meter_backward_and_optimizer

    trainer, pipe = step.trainer, step.pipe
    state = {"backward": False}

    def unet_phase():
        return "UNet recompute (backward)" if state["backward"] else (
            "UNet calls (autograd on; all T checkpointed)" if torch.is_grad_enabled() else "UNet no grad (prefix, I0)")

    def pre(module, args):
        meter._stack.append(unet_phase())

    def post(module, args, out):
        meter._stack.pop()

    pipe.unet.register_forward_pre_hook(pre)
    pipe.unet.register_forward_hook(post)
    decode = pipe.vae.decode

    def vae(*args, **kwargs):
        name = "VAE recompute (backward)" if state["backward"] else (
            "VAE decode (grad)" if torch.is_grad_enabled() else "VAE decode (no grad, I0)")
        with meter.phase(name):
            return decode(*args, **kwargs)

    pipe.vae.decode = vae
    rewards = trainer.compute_rewards

    def compute_rewards(pairs):
        with meter.phase("reward (grad)"):
            return rewards(pairs)

    trainer.compute_rewards = meter_backward_and_optimizer(meter, compute_rewards, trainer.optimizer, state)

    def metered():
        meter._stack[0] = "forward: sampler, constraint, other"
        with meter:
            step()
        state["backward"] = False

    return metered


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=("ours", "trl"), required=True)
    p.add_argument("--model", required=True, help="a saved diffusers StableDiffusionPipeline folder")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps (after one untimed warm-up step)")
    p.add_argument("--sampler-steps", type=int, default=20, help="T: DDIM steps")
    p.add_argument("--k", type=int, default=2, help="K: gradient through the last K steps")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompts", nargs="+",
                   default=["a red circle", "a blue square", "a green triangle", "a yellow star"])
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="ours only: checkpoint the K UNet calls, as TRL does")
    p.add_argument("--rss-interval", type=float, default=0.002)
    p.add_argument("--meter", action="store_true",
                   help="after the timed steps, one more step under _tensor_memory.TensorMeter")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"trl-bench-{args.side}-") as tmp:
        step = (setup_ours if args.side == "ours" else setup_trl)(args, tmp)
        setup_s = time.perf_counter() - t0
        rss_before = rss_bytes()  # model, LoRA and optimizer built; no step taken yet
        with RSSSampler(args.rss_interval) as sampler:  # covers the warm-up step too
            t1 = time.perf_counter()
            rewards = [step()]  # warm-up, not timed
            warmup_s = time.perf_counter() - t1
            warmup_peak, rss_after_warmup = sampler.peak, rss_bytes()
            times, cpu_times = [], []
            for _ in range(args.steps):
                t, c = time.perf_counter(), time.process_time()
                rewards.append(step())
                times.append(time.perf_counter() - t)
                cpu_times.append(time.process_time() - c)
        tensor = None
        if args.meter:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from _tensor_memory import TensorMeter, instrument

            meter = TensorMeter()
            if os.environ.get("METER_DESCRIBE"):
                meter.describe = {}
            if args.side == "trl":
                instrument_trl(step, meter)()
            else:
                instrument(step.trainer, meter)()
            tensor = meter.report()
            if meter.describe is not None:
                top = sorted(meter.made_by_op.items(), key=lambda kv: -kv[1])[:25]
                tensor["made_by_op_mib"] = [[ph, op, round(v / 2**20, 2)] for (ph, op), v in top]
    import diffusers
    import transformers

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__}
    try:
        import peft
        versions["peft"] = peft.__version__
    except ImportError:
        pass
    if args.side == "trl":
        import accelerate
        import trl

        versions.update(trl=trl.__version__, accelerate=accelerate.__version__)
    result = {
        "side": args.side, "grad_checkpointing": args.grad_checkpointing, "times": times, "setup_s": setup_s,
        "warmup_s": warmup_s, "rewards": rewards,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "rss_before_steps_mb": rss_before / 2**20, "rss_peak_steps_mb": sampler.peak / 2**20,
        "rss_step_delta_mb": (sampler.peak - rss_before) / 2**20,
        "rss_warmup_delta_mb": (warmup_peak - rss_before) / 2**20, "rss_after_warmup_mb": rss_after_warmup / 2**20,
        "cpu_times": cpu_times,
        "tensor": tensor, "torch_threads": torch.get_num_threads(), "loadavg_1min_end": os.getloadavg()[0],
        "versions": versions,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
