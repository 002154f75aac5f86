"""Configuration: nested dataclasses, loaded from YAML plus checked dotted overrides.

``load_config("cfg.yaml", ["train.lr=1e-4", "lora.rank=8"])`` returns a validated :class:`Config`.
Unknown keys and wrong types raise :class:`ConfigError` listing the valid keys.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .checks import MAX_SIDE, check_ranges, check_size  # noqa: F401 (MAX_SIDE: used by the CLI)
from ..errors import ConfigError, short, short_path


class _Loader(yaml.SafeLoader):
    """YAML 1.2-style booleans: only true/false are booleans; yes/no/on/off stay strings
    (so `mixed_precision: no` and `reference_cache: off` mean what they say)."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _f(default: Any, help: str) -> Any:
    """A dataclass field with a help string (shown by ``focusnfix train --help-config``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    path: str = _f("", "Diffusers folder or hub id of an SD 1.x/2.x, SDXL, SD3/3.5 or FLUX.1 pipeline; `world` = the built-in world, `world-flow` = its SD3-format flow-matching sibling, `tiny` = random tiny model.")
    revision: str | None = _f(None, "Hub revision (ignored for local folders).")
    dtype: str = _f("float32", "Dtype of the frozen weights: float32, float16 or bfloat16. LoRA stays float32.")
    resolution: int | None = _f(None, "Square image side in px; default: the UNet's sample_size times the VAE factor. sampler.height/width override it.")
    attention: str = _f("default", "Attention implementation of UNet and VAE: default (diffusers' choice), sdpa (torch scaled_dot_product_attention) or eager.")
    offload_text_encoders: bool = _f(False, "SD3/FLUX: keep the text encoders (T5-XXL) on the CPU and move them to the GPU only to encode prompts; the rest of the time only the transformer and VAE use GPU memory.")
    compile: bool = _f(False, "torch.compile the UNet (inductor, layout optimization off for correct gradients). Slow to compile: minutes on CPU.")


@dataclass
class LoRAConfig:
    rank: int = _f(4, "LoRA rank r (the paper uses 64 on SD1.4).")
    alpha: float | None = _f(None, "LoRA alpha; the update is scaled by alpha / rank. Default: alpha = rank.")
    targets: list[str] | None = _f(None, "Denoiser module names that get adapters; default: the family's attention projections (SD/SDXL: to_q, to_k, to_v, to_out.0; SD3/FLUX also the text-stream add_q_proj, add_k_proj, add_v_proj, to_add_out).")
    dropout: float = _f(0.0, "LoRA dropout on the adapters' inputs, only in the gradient-carrying calls (the last K steps of the trained pass); previews, references and inference never drop.")


@dataclass
class SamplerConfig:
    steps: int = _f(20, "T: DDIM steps (eta = 0).")
    guidance_scale: float = _f(7.5, "Classifier-free guidance scale; <= 1 disables CFG.")
    negative_prompt: str = _f("", "Negative prompt used for the unconditional branch of CFG.")
    height: int | None = _f(None, "Image height in px (a multiple of the VAE factor, 8 for SD); default: model.resolution, else the model's own size.")
    width: int | None = _f(None, "Image width in px (a multiple of the VAE factor); default: model.resolution, else the model's own size.")
    k: int = _f(1, "K: gradient flows through the last K denoising steps only (DRaFT-K). 1 <= K <= T.")
    k_max: int | None = _f(None, "If set, K is drawn uniformly from [k, k_max] once per trajectory (AlignProp-style).")
    grad_checkpointing: bool | str = _f(False, "Gradient checkpointing of the K UNet calls (less memory, more time): true, false, or auto (on for trajectories with K >= 4, where the K calls' activations dominate memory).")
    vae_checkpointing: bool = _f(False, "Gradient checkpointing of the VAE decode.")
    checkpoint_chunks: int = _f(2, "Checkpointed calls (the K UNet calls, the VAE decode) run as this many row chunks, so backward recomputes one chunk at a time: less peak memory, +10-19 % time on CPU (BENCHMARKS.md (h)); 1 = whole calls.")


@dataclass
class RewardConfig:
    name: str = _f("color", "Reward name from the registry (focusnfix rewards) or `package.module:attr`.")
    args: dict = _f({}, "Keyword arguments passed to the reward's constructor.")


@dataclass
class MaskConfig:
    source: str = _f("auto", "Where M(I0) comes from: heatmap, saliency, or auto (heatmap if the reward has one).")
    threshold: float = _f(0.5, "Absolute threshold on the [0,1] heatmap (saliency maps are max-normalised first).")
    quantile: float | None = _f(None, "If set (0-1), threshold each map at this quantile instead of `threshold`.")
    dilate: int = _f(2, "Dilation radius in px applied after thresholding.")
    blur: float = _f(0.0, "Gaussian blur sigma in px applied last (soft mask edges); 0 = binary mask.")
    min_area: int = _f(0, "Connected regions smaller than this many px are dropped before dilation.")
    skip_above: float | None = _f(None, "Images whose reward is already >= this get an empty mask (nothing to fix); use with saliency masks.")


@dataclass
class ObjectiveConfig:
    lam: float = _f(1.0, "lambda: weight of the region constraint ||(1-M(I0)) * (I - I0)||; 0 = DRaFT.")
    norm: str = _f("fro", "fro: Frobenius norm per image (paper); rms: divided by sqrt(3*H*W), resolution-independent.")
    lam_warmup: int = _f(0, "Ramp lambda linearly over the first N optimizer steps (ours, not in the paper): step s (counted from 0) uses lam * min(1, s / N), so step 0 is DRaFT and steps >= N use the full lambda; 0 = off (the paper: the full lambda from step 0). A function of the step, so a resumed run continues the same schedule.")
    eps: float = _f(0.0, "Smooth the constraint at I = I0 (ours): sqrt(||d||^2 + e^2) - e, e = eps*sqrt(3*H*W) (eps in RMS pixel units, e.g. 1e-3); 0 = the paper's norm, whose gradient has length lambda even when I - I0 is rounding noise.")


@dataclass
class GRPOConfig:
    group_size: int = _f(4, "G: samples per prompt (different noise); advantages are normalised within each group.")
    eta: float = _f(1.0, "Stochasticity of the policy: DDIM's eta for the UNet families (0 < eta <= 1; 1 = DDPM's posterior variance), the SDE noise level a for SD3/FLUX (Flow-GRPO uses 0.7).")
    clip_range: float = _f(1e-4, "epsilon of the clipped importance ratio (PPO/GRPO).")
    adv_clip: float = _f(5.0, "Advantages are clipped to [-adv_clip, adv_clip].")
    timesteps: int | None = _f(None, "Denoising steps per trajectory that carry the policy gradient (a random subset, drawn once per micro-batch; at most T); default: all T.")
    mask_scope: str = _f("sample", "fnf-grpo's mask M per sample: sample (its own detections) or group (ours: the union over its group, so clean samples, whose advantage is largest, are pushed where their group had the problem).")


@dataclass
class DataConfig:
    prompts: list[str] = _f([], "Training prompts (or use prompt_file).")
    prompt_file: str | None = _f(None, "A .txt (one prompt per line), .csv or .tsv (column `prompt`) file.")
    prompt_set: str | None = _f(None, "A packaged prompt set, e.g. parti, parti:People, animals (docs/rewards.md).")
    seed_pool: int | None = _f(None, "If set, noise seeds are drawn from range(seed_pool); else from 2**31.")
    sample_prompts: list[str] = _f([], "Prompts of the periodic sample grids; default: the first 4 training prompts.")
    sample_seeds: list[int] = _f([0], "Noise seeds of the periodic sample grids.")


@dataclass
class TrainConfig:
    steps: int = _f(100, "Optimizer steps.")
    batch_size: int = _f(1, "Trajectories per micro-batch.")
    grad_accum: int = _f(1, "Micro-batches per optimizer step.")
    lr: float = _f(1e-4, "AdamW learning rate.")
    lr_schedule: str = _f("constant", "constant, linear or cosine (after warmup).")
    warmup_steps: int = _f(0, "Linear warm-up steps.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_eps: float = _f(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm; 0 disables clipping.")
    mixed_precision: str = _f("no", "no, fp16 (with dynamic loss scaling) or bf16 autocast; LoRA parameters stay float32.")
    tf32: bool = _f(True, "Allow TF32 matmuls/convolutions on NVIDIA GPUs (Ampere+); no effect on CPU.")
    seed: int = _f(0, "Seed of everything random in training (prompt order, noise seeds, K draws, LoRA init).")
    log_every: int = _f(1, "Write metrics every N steps.")
    sample_every: int = _f(0, "Save a sample grid I0 | mask | I every N steps; 0 = only at the end.")
    checkpoint_every: int = _f(0, "Save a resumable checkpoint every N steps; 0 = only at the end.")
    export_lora_steps: list[int] = _f([], "Also write the LoRA in diffusers format, with its model card, to RUN/lora-step-NNNNNN/ after each of these optimizer steps (steps beyond train.steps wait for a resume that raises it), loadable like lora/ (`focusnfix eval --methods NAME=RUN/lora-step-000030`). Written atomically; an export already present is kept (a resume that changes any config key drops the exports after its checkpoint).")
    keep_checkpoints: int = _f(2, "Keep the newest N checkpoints.")
    max_bad_steps: int = _f(3, "Stop after N consecutive steps with a non-finite loss or gradient (each is skipped).")
    output_dir: str = _f("runs/fnf", "The run folder.")
    cpu: bool = _f(False, "Force CPU even when a GPU is present.")
    fsdp: bool = _f(False, "Shard the frozen UNet over the processes (FSDP2) instead of replicating it; also on under an accelerate FSDP config (docs/distributed.md).")
    reference_cache: str = _f("memory", "Cache of I0 and M(I0) per (prompt, seed): off, memory, or a folder (memory + disk, reused across runs). Kept in memory only with data.seed_pool (without it pairs never recur: memory builds no cache, a folder is disk-only).")
    reference_cache_mb: float = _f(1024.0, "Most host memory (MiB) the reference cache holds (LRU by bytes); an entry is I0 (float32) and M(I0) (uint8 when binary): 3.25 MiB at 512 px.")
    reference_cache_items: int | None = _f(None, "Deprecated (use reference_cache_mb): if set, also caps the number of cached references.")
    batch_reference: bool = _f(True, "On a reference-cache miss, run the frozen and the trained model's first T-K steps as one batch (per-row LoRA on/off); equal up to float rounding. Off under model.compile.")
    collective_timeout: float = _f(300.0, "Seconds a process of a distributed job waits for the others in a collective (all-reduce, barrier) before the job fails with status 1 (a dead or frozen process); no effect in one process.")
    report_to: str = _f("none", "Experiment trackers that also get the metrics.jsonl scalars and the sample grids (accelerate): none, tensorboard (the run folder's tensorboard/), wandb or all; a tracker whose package is missing is an error at start.")
    push_to_hub: bool = _f(False, "Upload lora/ (weights, model card, sample grid) to train.hub_repo_id at the end of training; needs a token (HF_TOKEN or huggingface-cli login). Or later: focusnfix push RUN --repo-id ID.")
    hub_repo_id: str | None = _f(None, "Hub model repo of train.push_to_hub, e.g. you/sd14-fnf (created if missing).")
    hub_private: bool = _f(False, "Create the train.hub_repo_id repo private (an existing public repo is refused).")


@dataclass
class Config:
    method: str = _f("fnf", "fnf (Focus-N-Fix), draft (lambda = 0, no reference pass), grpo (policy gradient, any reward) or fnf-grpo (region-aware GRPO: policy gradient inside the mask, KL to the frozen model outside, weighted by objective.lam).")
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
        """Check ranges and cross-field rules; raise :class:`ConfigError` naming the key. Every number
        is finite (checked when read) and within its range (:mod:`focusnfix.config_checks`)."""
        s, t = self.sampler, self.train
        _check(self.method in ("fnf", "draft", "grpo", "fnf-grpo"), "method", f"must be fnf, draft, grpo or fnf-grpo, got {self.method!r}")
        g = self.grpo
        _check(g.group_size >= 2, "grpo.group_size", f"must be >= 2 (advantages compare samples of one prompt), got {g.group_size}")
        _check(0.0 < g.eta <= 1.0, "grpo.eta", f"must be in (0, 1], got {g.eta}")
        _check(g.clip_range > 0 and g.adv_clip > 0, "grpo", "clip_range and adv_clip must be > 0")
        _check(g.timesteps is None or g.timesteps >= 1, "grpo.timesteps", f"must be >= 1, got {g.timesteps}")
        _check(bool(self.model.path), "model.path", "is required (a diffusers folder, a hub id, or `tiny`)")
        _check(self.model.dtype in ("float32", "float16", "bfloat16"), "model.dtype", "must be float32, float16 or bfloat16")
        _check(self.model.attention in ("default", "sdpa", "eager"), "model.attention", "must be default, sdpa or eager")
        _check(self.lora.rank > 0, "lora.rank", f"must be > 0, got {self.lora.rank}")
        _check(self.lora.alpha is None or self.lora.alpha > 0, "lora.alpha", "must be > 0")
        _check(self.lora.targets is None or bool(self.lora.targets), "lora.targets", "must name at least one module")
        for side in ("height", "width"):
            value = getattr(s, side)
            _check(value is None or value > 0, f"sampler.{side}", f"must be > 0, got {value}")
        _check(self.model.resolution is None or self.model.resolution > 0, "model.resolution", f"must be > 0, got {self.model.resolution}")
        _check(s.steps >= 1, "sampler.steps", f"must be >= 1, got {s.steps}")
        _check(isinstance(s.grad_checkpointing, bool) or s.grad_checkpointing == "auto", "sampler.grad_checkpointing",
               f"must be true, false or auto, got {s.grad_checkpointing!r}")
        _check(1 <= s.k <= s.steps, "sampler.k", f"K must satisfy 1 <= K <= T = sampler.steps ({s.steps}), got {s.k}")
        if s.k_max is not None:
            _check(s.k <= s.k_max <= s.steps, "sampler.k_max", f"must satisfy k <= k_max <= sampler.steps, got {s.k_max}")
        _check(self.mask.source in ("auto", "heatmap", "saliency"), "mask.source", "must be auto, heatmap or saliency")
        _check(0.0 <= self.mask.threshold <= 1.0, "mask.threshold", "must be in [0, 1]")
        _check(self.mask.quantile is None or 0.0 < self.mask.quantile < 1.0, "mask.quantile", "must be in (0, 1)")
        _check(self.mask.dilate >= 0 and self.mask.blur >= 0 and self.mask.min_area >= 0, "mask", "dilate, blur and min_area must be >= 0")
        _check(self.objective.lam >= 0, "objective.lam", f"lambda must be >= 0, got {self.objective.lam}")
        _check(self.objective.lam_warmup >= 0, "objective.lam_warmup", f"must be >= 0 steps, got {self.objective.lam_warmup}")
        _check(self.objective.lam_warmup == 0 or self.method == "fnf", "objective.lam_warmup",
               f"ramps the region constraint of method=fnf only; set it to 0 for method={self.method}")
        bad = [n for n in t.export_lora_steps if not 1 <= n <= 10**9]
        _check(not bad, "train.export_lora_steps", f"must be optimizer steps in [1, 1e9], got {bad[:3]}")
        _check(self.objective.norm in ("fro", "rms"), "objective.norm", "must be fro or rms")
        _check(self.grpo.mask_scope in ("sample", "group"), "grpo.mask_scope", "must be sample or group")
        _check(t.steps >= 1 and t.batch_size >= 1 and t.grad_accum >= 1, "train", "steps, batch_size and grad_accum must be >= 1")
        _check(t.lr > 0, "train.lr", "must be > 0")
        _check(t.lr_schedule in ("constant", "linear", "cosine"), "train.lr_schedule", "must be constant, linear or cosine")
        _check(t.mixed_precision in ("no", "fp16", "bf16"), "train.mixed_precision", "must be no, fp16 or bf16")
        _check(not (t.fsdp and t.mixed_precision == "fp16"), "train.mixed_precision",
               "fp16 is not supported with train.fsdp (its loss scaler does not handle sharded gradients); use bf16")
        _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        _check(t.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
        _check(bool(self.data.prompts or self.data.prompt_file or self.data.prompt_set), "data.prompts",
               "is empty: give data.prompts, data.prompt_file or data.prompt_set")
        check_ranges(self)
        return self


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {msg}")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every config key as ``(dotted.key, default, help)``, for docs and ``--help-config``."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += field_help(hints[f.name], prefix + f.name + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, repr(default), f.metadata.get("help", "")))
    return rows


def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _valid_keys(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # e.g. bool | str: a boolean word, else the string (auto)
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
    elif tp is int:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)  # 1e4 written for 10000
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:
                raise ConfigError(f"{key} must be an integer below 2**63, got {short(value)}")
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range
                number = math.inf
        elif isinstance(value, str):
            try:
                number = float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number, got {short(value)}")
            return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            if "\x00" in str(value):
                raise ConfigError(f"{key} holds a NUL character; remove it")
            return str(value)
    elif origin is list or tp is list:
        if isinstance(value, str) and args and args[0] is str:
            value = [value]
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0] if args else Any, key) for v in value]
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            check_size(value, key)
            return dict(value)
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{key} must be {name}, got {short(value)} ({type(value).__name__})")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints, names = _hints(cls), {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key {short(prefix + str(key))}; valid keys here: {_valid_keys(cls)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value if value is not None else {}, prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return cls(**kwargs)


def apply_override(data: dict, override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to nested dict ``data`` in place."""
    if "=" not in override:
        raise ConfigError(f"override {short(override)} must look like key=value, e.g. train.lr=1e-4")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    cls: type = Config
    node = data
    for i, part in enumerate(parts):
        hints, names = _hints(cls), {f.name for f in dataclasses.fields(cls)}
        if part not in names:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown config key {short(key)}; valid keys in {where}: {_valid_keys(cls)}")
        tp = hints[part]
        if i == len(parts) - 1:
            node[part] = _parse_value(raw)
        elif typing.get_origin(tp) is dict or tp is dict:  # free-form mapping, e.g. reward.args.model=...
            for sub in parts[i: -1]:
                if not isinstance(node.get(sub), dict):
                    node[sub] = {}
                node = node[sub]
            node[parts[-1]] = _parse_value(raw)
            return
        elif dataclasses.is_dataclass(tp):
            cls = tp
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"{short('.'.join(parts[: i + 1]))} is not a section; cannot set {short(key)}")


def _parse_value(raw: str) -> Any:
    try:
        return _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    except RecursionError:
        raise ConfigError(f"override value {short(raw)} is nested too deeply") from None


MAX_CONFIG_BYTES = 16 * 2**20
PACKAGED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # shipped in the wheel; `configs/` in a checkout


def _packaged(path: Path) -> Path:
    """``world-artifact``, ``world-artifact.yaml`` or ``configs/world-artifact.yaml`` name a packaged config
    when no such file exists here (an installed package has no ``configs/`` folder)."""
    if path.is_file() or path.parent not in (Path("."), Path("configs")):
        return path
    shipped = PACKAGED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else path.name + ".yaml")
    return shipped if shipped.is_file() else path


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a YAML config (or defaults when ``path`` is None), apply overrides, validate. ``path`` may
    name a packaged config (``world-artifact``)."""
    data: dict = {}
    if path is not None:
        path = _packaged(Path(path))
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
            raise ConfigError(f"config file {short_path(path)} not found (packaged configs: {names})")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {short_path(path)} is larger than {MAX_CONFIG_BYTES // 2**20} MB; "
                              "put long prompt lists in data.prompt_file")
        try:
            data = _yaml(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            msg = str(e).replace("\n", " ")
            raise ConfigError(f"config file {short_path(path)} is not valid YAML: {msg}") from None
        except RecursionError:
            raise ConfigError(f"config file {short_path(path)} is nested too deeply to be a config") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {short_path(path)} must hold a mapping of sections, got {type(data).__name__}")
    for ov in overrides:
        apply_override(data, ov)
    return from_dict(Config, data).validate()


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (a crash leaves the old file or the new one)."""
    from ..runs.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
