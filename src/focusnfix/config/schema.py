"""The configuration's schema: nested dataclasses, one per section, each field with its default, its help
text and its limits (:mod:`focusnfix.config.fields`), and :meth:`Config.validate` with the rules that
relate several fields.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .fields import _f, check_fields
from .methods import METHODS, method_help, method_names
from .names import check_repo_id

MAX_SIDE = 16384  # px: larger images than any model makes; a typo such as 5120000 fails here, not in an allocation
MAX_SEED = 2**63  # seeds go to torch.Generator.manual_seed (a 64-bit integer)
MAX_PROMPT_CHARS = 4000  # the same limit for train, sample and eval prompts
BIG = 2**31 - 1
# Samples in one GRPO rollout (train.batch_size x grpo.group_size): a rollout encodes, samples, decodes and scores
# them as one batch and keeps each one's T+1 latents and T log-prob maps until the loss: per sample at 512 px and
# T = 20, 41 x 64 KiB of float32 latents + a 3 MiB image = 5.6 MiB, so 4096 samples already hold 22 GiB.
MAX_ROLLOUT = 4096


@dataclass
class ModelConfig:
    path: str = _f("", "Diffusers folder or hub id of an SD 1.x/2.x, SDXL, SD3/3.5 or FLUX.1 pipeline; `world` = the "
                   "built-in world, `world-flow` = its SD3-format flow-matching sibling, `tiny` = random tiny model.",
                   empty="is required (a diffusers folder, a hub id, or `tiny`)")
    revision: str | None = _f(None, "Hub revision (ignored for local folders).")
    dtype: str = _f("float32", "Dtype of the frozen weights: float32, float16 or bfloat16. LoRA stays float32.",
                    choices=("float32", "float16", "bfloat16"))
    resolution: int | None = _f(None, "Square image side in px; default: the UNet's sample_size times the VAE factor. "
                                "sampler.height/width override it.", range=(1, MAX_SIDE), unit="px")
    attention: str = _f("default", "Attention implementation of UNet and VAE: default (diffusers' choice), sdpa "
                        "(torch scaled_dot_product_attention) or eager.", choices=("default", "sdpa", "eager"))
    offload_text_encoders: bool = _f(False, "SD3/FLUX: keep the text encoders (T5-XXL) on the CPU and move them to "
                                     "the GPU only to encode prompts; the rest of the time only the transformer and "
                                     "VAE use GPU memory.")
    compile: bool = _f(False, "torch.compile the UNet (inductor, layout optimization off for correct gradients). Slow "
                       "to compile: minutes on CPU.")


@dataclass
class LoRAConfig:
    rank: int = _f(4, "LoRA rank r (the paper uses 64 on SD1.4).", range=(1, 4096))
    alpha: float | None = _f(None, "LoRA alpha; the update is scaled by alpha / rank. Default: alpha = rank.",
                             range=(0.0, 1e6), open="lo")
    targets: list[str] | None = _f(None, "Denoiser module names that get adapters, matched as peft does (a name "
                                   "selects every module whose qualified name ends with it: to_q, attn1.to_out.0, "
                                   "ff.net.0.proj); default: the family's attention "
                                   "projections (SD/SDXL: to_q, to_k, to_v, to_out.0; SD3/FLUX also the text-stream "
                                   "add_q_proj, add_k_proj, add_v_proj, to_add_out).",
                                   empty="must name at least one module")
    dropout: float = _f(0.0, "LoRA dropout on the adapters' inputs, only in the gradient-carrying calls (the last K "
                        "steps of the trained pass); previews, references and inference never drop.",
                        range=(0.0, 1.0), open="hi")
    use_dora: bool = _f(False, "DoRA (weight-decomposed LoRA, peft's use_dora): also train a magnitude m per output "
                        "channel, W' = m (W + BA) / ‖W + BA‖ (norms per channel); slower per step. Saved in diffusers "
                        "format (loads with load_lora_weights); no kohya-format copy, and not with train.fsdp.")


@dataclass
class SamplerConfig:
    steps: int = _f(20, "T: DDIM steps (eta = 0).", range=(1, 1000))
    guidance_scale: float = _f(7.5, "Classifier-free guidance scale; <= 1 disables CFG.", range=(0.0, 1e4))
    negative_prompt: str = _f("", "Negative prompt used for the unconditional branch of CFG.",
                              max_chars=MAX_PROMPT_CHARS)
    height: int | None = _f(None, "Image height in px (a multiple of the VAE factor, 8 for SD); default: "
                            "model.resolution, else the model's own size.", range=(1, MAX_SIDE), unit="px")
    width: int | None = _f(None, "Image width in px (a multiple of the VAE factor); default: model.resolution, else "
                           "the model's own size.", range=(1, MAX_SIDE), unit="px")
    k: int = _f(1, "K: gradient flows through the last K denoising steps only (DRaFT-K). 1 <= K <= T.")
    k_max: int | None = _f(None, "If set, K is drawn uniformly from [k, k_max] once per trajectory (AlignProp-style).")
    grad_checkpointing: bool | str = _f(False, "Gradient checkpointing of the K UNet calls (less memory, more time): "
                                        "true, false, or auto (on for trajectories with K >= 4, where the K calls' "
                                        "activations dominate memory).", choices=(True, False, "auto"))
    vae_checkpointing: bool = _f(False, "Gradient checkpointing of the VAE decode.")
    checkpoint_chunks: int = _f(2, "Checkpointed calls (the K UNet calls, the VAE decode) run as this many row "
                                "chunks, so backward recomputes one chunk at a time: less peak memory, +10-19 % time "
                                "on CPU (BENCHMARKS.md (h)); 1 = whole calls.", range=(1, 4096))


@dataclass
class RewardConfig:
    name: str = _f("color", "Reward name from the registry (focusnfix rewards) or `package.module:attr`.",
                   empty="is empty; give a reward name or package.module:attr")
    args: dict = _f({}, "Keyword arguments passed to the reward's constructor.")


@dataclass
class MaskConfig:
    source: str = _f("auto", "Where M(I0) comes from: heatmap, saliency, or auto (heatmap if the reward has one); "
                     "none: M = 0, the constraint over the whole image (a global constraint, for comparison).",
                     choices=("auto", "heatmap", "saliency", "none"))
    threshold: float = _f(0.5, "Absolute threshold on the [0,1] heatmap (saliency maps are max-normalised first).",
                          range=(0.0, 1.0))
    quantile: float | None = _f(None, "If set (0-1), threshold each map at this quantile instead of `threshold`.",
                                range=(0.0, 1.0), open="both")
    dilate: int = _f(2, "Dilation radius in px applied after thresholding.", range=(0, MAX_SIDE), unit="px")
    blur: float = _f(0.0, "Gaussian blur sigma in px applied last (soft mask edges); 0 = binary mask.",
                     range=(0.0, MAX_SIDE), unit="px")
    min_area: int = _f(0, "Connected regions smaller than this many px are dropped before dilation.",
                       range=(0, MAX_SIDE**2), unit="px")
    skip_above: float | None = _f(None, "Images whose reward is already >= this get an empty mask (nothing to fix); "
                                  "use with saliency masks.")


@dataclass
class ObjectiveConfig:
    lam: float = _f(1.0, "lambda: weight of the region constraint ||(1-M(I0)) * (I - I0)||; 0 = DRaFT.",
                    range=(0.0, 1e12))
    norm: str = _f("fro", "fro: Frobenius norm per image (paper); rms: divided by sqrt(3*H*W), resolution-independent.",
                   choices=("fro", "rms"))
    lam_warmup: int = _f(0, "Ramp lambda linearly over the first N optimizer steps (ours, not in the paper): step s "
                         "(counted from 0) uses lam * min(1, s / N), so step 0 is DRaFT and steps >= N use the full "
                         "lambda; 0 = off (the paper: the full lambda from step 0). A function of the step, so a "
                         "resumed run continues the same schedule.", range=(0, None), unit="steps")
    eps: float = _f(0.0, "Smooth the constraint at I = I0 (ours): sqrt(||d||^2 + e^2) - e, e = eps*sqrt(3*H*W) (eps "
                    "in RMS pixel units, e.g. 1e-3); 0 = the paper's norm, whose gradient has length lambda even when "
                    "I - I0 is rounding noise.", range=(0.0, 1.0))
    budget: float | None = _f(None, "Collateral budget B (ours): how much the image may change outside the problem "
                              "mask, as the mean |I - I0| over the pixels and channels outside M in 8-bit grey levels "
                              "(1.0 = one level per pixel and channel on average; eval's outside change x 255). Set, "
                              "lambda is a Lagrange multiplier found during training (starting at 0, raised while the "
                              "measured change exceeds B, lowered while it is below; objective.lam is not used, nor "
                              "fnf-grpo's grpo.kl_weight); unset, the fixed weight. docs/tuning.md.",
                              range=(0.0, 255.0), open="lo", unit="grey levels")
    budget_rate: float = _f(0.2, "eta: how fast the multiplier of objective.budget adapts: at most a factor e^eta per "
                            "optimizer step (methods/budget.py).", range=(0.0, 10.0), open="lo")
    budget_measure_every: int = _f(1, "fnf: while objective.budget's multiplier is 0 (slack), compute the frozen "
                                   "reference to measure the change on one optimizer step in N only; the others are "
                                   "DRaFT steps (the same gradient, no reference pass). 1 = every step.",
                                   range=(1, 10**6), unit="steps")
    clean_weight: float = _f(1.0, "c (ours): the constraint's weight on images whose mask M(I0) is empty (nothing to "
                             "fix there, so the whole image should stay) is lambda*c, on the others lambda. 1 = the "
                             "paper's one weight.", range=(0.0, 1e6))
    trajectory_weight: float = _f(0.0, "rho (ours): also constrain the early, gradient-free steps of the trajectory: "
                                  "at objective.trajectory_steps random steps among the first T-K, the fine-tuned "
                                  "model's sampler step outside M (on the latent grid) is held to the frozen model's "
                                  "step from the same latents, weighted lambda*rho beside the image term "
                                  "(methods/objective.py). 0 = the paper's loss.", range=(0.0, 1e6))
    trajectory_steps: int = _f(1, "J: steps per micro-batch that carry objective.trajectory_weight's term (each: one "
                               "model call with gradient and one frozen call).", range=(1, 1000), unit="steps")


@dataclass
class GRPOConfig:
    group_size: int = _f(4, "G: samples per prompt (different noise); advantages are normalised within each group. "
                         f"train.batch_size x G <= {MAX_ROLLOUT} (one rollout holds them all at once).",
                         range=(2, MAX_ROLLOUT))
    eta: float = _f(1.0, "Stochasticity of the policy: DDIM's eta for the UNet families (0 < eta <= 1; 1 = DDPM's "
                    "posterior variance), the SDE noise level a for SD3/FLUX (Flow-GRPO uses 0.7).",
                    range=(0.0, 1.0), open="lo")
    clip_range: float = _f(1e-4, "epsilon of the clipped importance ratio (PPO/GRPO).", range=(0.0, 1e6), open="lo")
    adv_clip: float = _f(5.0, "Advantages are clipped to [-adv_clip, adv_clip].", range=(0.0, 1e6), open="lo")
    timesteps: int | None = _f(None, "Denoising steps per trajectory that carry the policy gradient (a random subset, "
                               "drawn once per micro-batch; at most T); default: all T.", range=(1, 1000))
    mask_scope: str = _f("sample", "fnf-grpo's mask M per sample: sample (its own detections) or group (ours: the "
                         "union over its group, so clean samples, whose advantage is largest, are pushed where their "
                         "group had the problem).", choices=("sample", "group"))
    kl_weight: float | None = _f(None, "fnf-grpo: the weight of the KL outside the mask (L = L_pg + kl_weight * L_kl; "
                                 "0 = GRPO's policy gradient inside the mask only); default: objective.lam, its "
                                 "former key (deprecated for fnf-grpo).", range=(0.0, 1e12))


@dataclass
class DataConfig:
    prompts: list[str] = _f([], "Training prompts (and/or prompt_file, prompt_set, dataset).",
                            max_chars=MAX_PROMPT_CHARS)
    prompt_file: str | None = _f(None, "A .txt (one prompt per line), .csv or .tsv (column `prompt`) or .jsonl (one "
                                 "JSON object per line with a `prompt` field, as Flow-GRPO's) file; at most 50 MB.")
    prompt_set: str | None = _f(None, "A packaged prompt set, e.g. parti, parti:People, animals (docs/rewards.md).")
    dataset: str | None = _f(None, "A Hugging Face dataset: a folder written by save_to_disk, or a Hub id (needs the "
                             "network once); needs `pip install 'focusnfix[datasets]'`. Its prompts join the others.")
    dataset_split: str = _f("train", "The split of data.dataset (a Hub id also takes a slice, e.g. train[:1000]).",
                            empty="is empty: name a split, e.g. train")
    dataset_prompt_column: str = _f("prompt", "The text column of data.dataset.", empty="is empty: name a column")
    dataset_category_column: str | None = _f(None, "The category column of data.dataset; unset: `category` if it "
                                             "has one.")
    dataset_seed_column: str | None = _f(None, "The noise-seed column of data.dataset, checked (integers in [0, "
                                         "2**63)); training draws its own seeds (data.seed_pool); unset: `seed` if "
                                         "it has one.")
    seed_pool: int | None = _f(None, "If set, noise seeds are drawn from range(seed_pool); else from 2**31.",
                               range=(1, MAX_SEED))
    sample_prompts: list[str] = _f([], "Prompts of the periodic sample grids; default: the first 4 training prompts.",
                                   max_chars=MAX_PROMPT_CHARS)
    sample_seeds: list[int] = _f([0], "Noise seeds of the periodic sample grids.", range=(0, MAX_SEED - 1))
    eval_prompts: list[str] = _f([], "Held-out prompts of train.eval_every's evaluation (and/or eval_prompt_file).",
                                 max_chars=MAX_PROMPT_CHARS)
    eval_prompt_file: str | None = _f(None, "A prompt file of held-out prompts for train.eval_every (read as "
                                      "data.prompt_file).")
    eval_seeds: list[int] = _f([0], "Noise seeds of train.eval_every's evaluation: every eval prompt with each.",
                               range=(0, MAX_SEED - 1))


@dataclass
class TrainConfig:
    steps: int = _f(100, "Optimizer steps.", range=(1, 10**9))
    batch_size: int = _f(1, "Trajectories per micro-batch.", range=(1, 4096))
    grad_accum: int = _f(1, "Micro-batches per optimizer step.", range=(1, 2**20))
    lr: float = _f(1e-4, "AdamW learning rate.", range=(0.0, 1e3), open="lo")
    lr_schedule: str = _f("constant", "constant, linear or cosine (after warmup).",
                          choices=("constant", "linear", "cosine"))
    warmup_steps: int = _f(0, "Linear warm-up steps.", range=(0, 10**9))
    weight_decay: float = _f(0.0, "AdamW weight decay.", range=(0.0, 1e3))
    adam_beta1: float = _f(0.9, "AdamW beta1.", range=(0.0, 1.0), open="hi")
    adam_beta2: float = _f(0.999, "AdamW beta2.", range=(0.0, 1.0), open="hi")
    adam_eps: float = _f(1e-8, "AdamW epsilon.", range=(0.0, 1.0), open="lo")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm; 0 disables clipping.", range=(0.0, 1e12))
    mixed_precision: str = _f("no", "no, fp16 (with dynamic loss scaling) or bf16 autocast; LoRA parameters stay "
                              "float32.", choices=("no", "fp16", "bf16"))
    tf32: bool = _f(True, "Allow TF32 matmuls/convolutions on NVIDIA GPUs (Ampere+); no effect on CPU.")
    seed: int = _f(0, "Seed of everything random in training (prompt order, noise seeds, K draws, LoRA init).",
                   range=(0, 2**32 - 1))
    log_every: int = _f(1, "Write metrics every N steps.", range=(1, BIG))
    sample_every: int = _f(0, "Save a sample grid I0 | mask | I every N steps; 0 = only at the end.", range=(0, BIG))
    eval_every: int = _f(0, "Every N steps and after the last, sample data.eval_prompts x data.eval_seeds with the "
                         "current LoRA (the EMA's with train.ema; the sampler's settings, no gradient) and log the "
                         "mean training reward (eval/reward) and each judge's (eval/judge_NAME) to metrics.jsonl and "
                         "the trackers; the training trajectory is unchanged. 0 = off.", range=(0, BIG))
    eval_judges: list[str] = _f([], "Judges of train.eval_every, as `focusnfix eval --judge` takes them: NAME or "
                                "NAME={ARGS} (a reward name or package.module:Class, ARGS a YAML mapping).")
    eval_batch_size: int = _f(4, "Images per sampler call of train.eval_every's evaluation.", range=(1, 4096))
    ema: float = _f(0.0, "Decay d of an exponential moving average of the LoRA weights, updated after every optimizer "
                    "step with min(d, (1 + s) / (10 + s)) at step s; the EMA is what lora/, the lora-step-* exports, "
                    "the sample grids and train.eval_every show, and checkpoints hold it beside the trained weights. "
                    "0 = off.", range=(0.0, 1.0), open="hi")
    checkpoint_every: int = _f(0, "Save a resumable checkpoint every N steps; 0 = only at the end.", range=(0, BIG))
    export_lora_steps: list[int] = _f([], "Also write the LoRA in diffusers format, with its model card, to "
                                      "RUN/lora-step-NNNNNN/ after each of these optimizer steps (steps beyond "
                                      "train.steps wait for a resume that raises it), loadable like lora/ (`focusnfix "
                                      "eval --methods NAME=RUN/lora-step-000030`). Written atomically; an export "
                                      "already present is kept (a resume that changes any config key drops the "
                                      "exports after its checkpoint).", range=(1, 10**9))
    keep_checkpoints: int = _f(2, "Keep the newest N checkpoints.", range=(1, 10**6))
    max_bad_steps: int = _f(3, "Stop after N consecutive steps with a non-finite loss or gradient (each is skipped).",
                            range=(1, BIG))
    output_dir: str = _f("runs/fnf", "The run folder.", empty="is empty; give a folder")
    cpu: bool = _f(False, "Force CPU even when a GPU is present.")
    fsdp: bool = _f(False, "Shard the frozen UNet over the processes (FSDP2) instead of replicating it; also on under "
                    "an accelerate FSDP config (docs/distributed.md).")
    reference_cache: str = _f("memory", "Cache of I0 and M(I0) per (prompt, seed): off, memory, or a folder (memory + "
                              "disk, reused across runs). Kept in memory only with data.seed_pool (without it pairs "
                              "never recur: memory builds no cache, a folder is disk-only).",
                              empty="is empty; use off, memory or a folder")
    reference_cache_mb: float = _f(1024.0, "Most host memory (MiB) the reference cache holds (LRU by bytes); an entry "
                                   "is I0 (float32) and M(I0) (uint8 when binary): 3.25 MiB at 512 px.",
                                   range=(0.0, 2.0**40), unit="MiB")
    reference_cache_items: int | None = _f(None, "Deprecated (use reference_cache_mb): if set, also caps the number "
                                           "of cached references.", range=(1, 10**8))
    batch_reference: bool = _f(True, "On a reference-cache miss, run the frozen and the trained model's first T-K "
                               "steps as one batch (per-row LoRA on/off); equal up to float rounding. Off under "
                               "model.compile.")
    collective_timeout: float = _f(300.0, "Seconds a process of a distributed job waits for the others in a "
                                   "collective (all-reduce, barrier) before the job fails with status 1 (a dead or "
                                   "frozen process); no effect in one process.",
                                   range=(0.0, 7 * 24 * 3600.0), unit="s", open="lo")
    report_to: str = _f("none", "Experiment trackers that also get the metrics.jsonl scalars and the sample grids "
                        "(accelerate): none, tensorboard (the run folder's tensorboard/), wandb or all; a tracker "
                        "whose package is missing is an error at start.",
                        choices=("none", "tensorboard", "wandb", "all"))
    push_to_hub: bool = _f(False, "Upload lora/ (weights, model card, sample grid) to train.hub_repo_id at the end of "
                           "training; needs a token (HF_TOKEN or huggingface-cli login). Or later: focusnfix push RUN "
                           "--repo-id ID.")
    hub_repo_id: str | None = _f(None, "Hub model repo of train.push_to_hub, e.g. you/sd14-fnf (created if missing).",
                                 check=check_repo_id)
    hub_private: bool = _f(False, "Create the train.hub_repo_id repo private (an existing public repo is refused).")


@dataclass
class Config:
    method: str = _f("fnf", method_help())  # the names and phrases of the catalogue, config/methods.py
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        """Check every field against its limits (:func:`~focusnfix.config.fields.check_fields`: ranges, valid
        values, lengths; every number is also finite, checked when read) and the rules between fields; raise
        :class:`ConfigError` naming the key."""
        s, t = self.sampler, self.train
        _check_method(self.method)
        check_fields(self)
        _check(1 <= s.k <= s.steps, "sampler.k", f"K must satisfy 1 <= K <= T = sampler.steps ({s.steps}), got {s.k}")
        if s.k_max is not None:
            _check(s.k <= s.k_max <= s.steps, "sampler.k_max",
                   f"must satisfy k <= k_max <= sampler.steps, got {s.k_max}")
        _check(self.objective.lam_warmup == 0 or self.method == "fnf", "objective.lam_warmup",
               f"ramps the region constraint of method=fnf only; set it to 0 for method={self.method}")
        _check(self.objective.budget is None or self.objective.lam_warmup == 0, "objective.lam_warmup",
               "ramps a fixed lambda; with objective.budget the multiplier starts at 0 by itself: set it to 0")
        _check(self.objective.budget is None or self.method in ("fnf", "draft", "fnf-grpo"), "objective.budget",
               f"is for method=fnf and fnf-grpo (draft ignores it); method={self.method} takes a fixed weight: "
               "remove it")
        _check(self.objective.trajectory_weight == 0 or self.method in ("fnf", "draft"), "objective.trajectory_weight",
               f"is for method=fnf (draft ignores it); remove it for method={self.method}")
        _check(self.grpo.timesteps is None or self.grpo.timesteps <= s.steps, "grpo.timesteps",
               f"must be at most sampler.steps ({s.steps}), got {self.grpo.timesteps}; lower it or unset it (all T)")
        rollout = t.batch_size * self.grpo.group_size
        _check("grpo" not in METHODS[self.method].sections or rollout <= MAX_ROLLOUT, "grpo.group_size",
               f"x train.batch_size = {rollout} samples per rollout, over {MAX_ROLLOUT} (a rollout holds them all at "
               f"once: {MAX_ROLLOUT} at 512 px hold 22 GiB); lower train.batch_size or grpo.group_size and raise "
               "train.grad_accum for more prompts per step")
        _warn_lam_as_kl_weight(self)
        _check(t.eval_every == 0 or bool(self.data.eval_prompts or self.data.eval_prompt_file), "train.eval_every",
               "needs held-out prompts: set data.eval_prompts or data.eval_prompt_file (or train.eval_every=0)")
        _check(t.eval_every > 0 or not t.eval_judges, "train.eval_judges",
               "are scored by train.eval_every's evaluation, which is off: set train.eval_every, or remove them")
        _check(not (t.fsdp and self.lora.use_dora), "lora.use_dora",
               "is not supported with train.fsdp (DoRA's norm needs each whole frozen weight); turn one of them off")
        _check(not (t.fsdp and t.mixed_precision == "fp16"), "train.mixed_precision",
               "fp16 is not supported with train.fsdp (its loss scaler does not handle sharded gradients); use bf16")
        _check(bool(self.data.prompts or self.data.prompt_file or self.data.prompt_set or self.data.dataset),
               "data.prompts", "is empty: give data.prompts, data.prompt_file, data.prompt_set or data.dataset")
        _check(t.batch_size * t.grad_accum <= 2**20, "train.grad_accum",
               f"times train.batch_size must be at most {2**20} trajectories per step, "
               f"got {t.batch_size * t.grad_accum}")
        _check(not t.push_to_hub or bool(t.hub_repo_id), "train.push_to_hub",
               "needs train.hub_repo_id (e.g. you/sd14-fnf); set it, or push later with "
               "`focusnfix push RUN --repo-id ID`")
        return self


def _check_method(method: str) -> None:
    """The valid names of ``method``: the catalogue's (:mod:`focusnfix.config.methods`)."""
    _check(method in METHODS, "method", f"must be {method_names()}, got {method!r}")


def _warn_lam_as_kl_weight(cfg: Config) -> None:
    """fnf-grpo's KL weight set as ``objective.lam`` (its key before ``grpo.kl_weight``): still used, with a warning."""
    if cfg.method == "fnf-grpo" and cfg.grpo.kl_weight is None and cfg.objective.lam != ObjectiveConfig().lam:
        warnings.warn(f"objective.lam={cfg.objective.lam:g} weighs fnf-grpo's KL outside the mask; that key is "
                      f"deprecated for fnf-grpo: set grpo.kl_weight={cfg.objective.lam:g} instead", FutureWarning,
                      stacklevel=4)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {msg}")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
