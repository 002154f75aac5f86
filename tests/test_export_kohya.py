"""kohya-format LoRA files (issue 27): what lora/ holds for SD 1.x/2.x and SDXL beside the diffusers file, and
`focusnfix export RUN_OR_LORA --format kohya`. The kohya file must load through diffusers' own kohya path
(`pipe.load_lora_weights(file)` detects lora_unet_* keys and converts them) and give the images of the diffusers
file; SD3/FLUX LoRAs keep diffusers' transformer.* names (what diffusers and ComfyUI read) and get no kohya file."""
import pytest
import torch
from conftest import perturb_lora
from safetensors.torch import load_file, save_file

from focusnfix.backbones.lora import LORA_FILE, add_lora, save_lora
from focusnfix.cli import main
from focusnfix.config import LoRAConfig
from focusnfix.runs.export import write_lora_folder
from focusnfix.runs.kohya import SUFFIX, to_kohya

RANK, ALPHA = 2, 3.0  # scale alpha / rank = 1.5: a kohya file that dropped alpha (scale 1) would give other images
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in"]
PROMPTS = ["a red circle", "a blue square"]
# Tolerance of "the same images": both loaders end in the same peft LoRA layers holding the same float32 tensors
# (the kohya file keeps the dtype and every bit) and the same scale, alpha / rank, applied in float32. The only
# possible difference is how the scale is formed: the diffusers file gives alpha from its JSON metadata (a Python
# float), the kohya file from a float32 scalar tensor (``.item()``); alpha = 3 is exact in both, so the images are
# bit-identical here. An alpha that float32 cannot hold exactly would change the scale by at most 2**-24
# relative (one float32 rounding), moving each image by far less than 1e-6 on [0, 1]. ATOL = 1e-6 allows for that
# and nothing more: a lost alpha (scale 1 instead of 1.5) moves these images by > 1e-3, checked below.
ATOL = 1e-6


def _pipe(cls, path):
    kw = {"safety_checker": None, "requires_safety_checker": False} if cls.__name__ == "StableDiffusionPipeline" else {}
    return cls.from_pretrained(path, local_files_only=True, **kw)


def _lora_run(cls, path, out):
    """``out/lora/``: a perturbed rank-2, alpha-3 LoRA written by the trainer's export (:func:`write_lora_folder`)."""
    pipe = _pipe(cls, path)
    add_lora(pipe.unet, RANK, ALPHA, TARGETS)
    perturb_lora(pipe.unet)
    return write_lora_folder(out, "lora", 1, pipe.unet, LoRAConfig(rank=RANK, alpha=ALPHA, targets=TARGETS),
                             TARGETS, cls, None, None, None)


def _images(pipe, latents):
    return pipe(PROMPTS, num_inference_steps=4, guidance_scale=5.0, latents=latents, output_type="pt").images


def _latents(pipe):
    c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    return torch.randn(len(PROMPTS), c, s, s, generator=torch.Generator().manual_seed(0))


def _lora_layers(unet) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(m, LoraLayer) for m in unet.modules())


def _modules(tensors):
    """kohya module name -> the set of its tensor suffixes."""
    modules = {}
    for key in tensors:
        name, _, part = key.partition(".")
        modules.setdefault(name, set()).add(part)
    return modules


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def family(request, tiny_dir, tiny_xl_dir, tmp_path_factory):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls, path = {"sd": (StableDiffusionPipeline, tiny_dir), "sdxl": (StableDiffusionXLPipeline, tiny_xl_dir)}[
        request.param]
    out = tmp_path_factory.mktemp(f"kohya-{request.param}") / "my run"
    return cls, path, _lora_run(cls, path, out)


def test_lora_folder_holds_a_kohya_file_with_kohya_names_and_the_loras_alpha(family):
    cls, path, lora = family
    kohya = lora / f"my_run{SUFFIX}"  # named after the run (a space becomes _)
    assert sorted(p.name for p in lora.glob("*.safetensors")) == sorted([LORA_FILE, kohya.name])
    tensors, peft = load_file(str(kohya)), load_file(str(lora / LORA_FILE))
    modules = _modules(tensors)
    assert all(name.startswith("lora_unet_") and "." not in name for name in modules)
    assert all(parts == {"lora_down.weight", "lora_up.weight", "alpha"} for parts in modules.values())
    assert len(modules) == len(peft) // 2 and len(tensors) == 3 * len(modules)  # every LoRA module, nothing else
    for name in modules:
        alpha = tensors[f"{name}.alpha"]
        assert alpha.dim() == 0 and alpha.dtype == torch.float32 and alpha.item() == ALPHA
        assert tensors[f"{name}.lora_down.weight"].shape[0] == RANK
    # kohya's convention: lora_unet_ + the UNet module's diffusers path with dots as _, holding that module's
    # tensors bit for bit (lora_down = A: rank x in, lora_up = B: out x rank)
    for key, t in peft.items():
        module, kind = key[len("unet."):].replace(".lora.", ".lora_").rsplit(".lora_", 1)
        part = {"down.weight": "lora_down.weight", "A.weight": "lora_down.weight", "up.weight": "lora_up.weight",
                "B.weight": "lora_up.weight"}[kind]
        assert torch.equal(tensors[f"lora_unet_{module.replace('.', '_')}.{part}"], t), key


def test_kohya_file_loads_through_diffusers_kohya_path_and_gives_the_same_images(family):
    cls, path, lora = family
    kohya = next(lora.glob(f"*{SUFFIX}"))
    base = _pipe(cls, path)
    latents = _latents(base)
    reference = _images(base, latents)
    peft_pipe, kohya_pipe = _pipe(cls, path), _pipe(cls, path)
    peft_pipe.load_lora_weights(lora, weight_name=LORA_FILE)
    kohya_pipe.load_lora_weights(str(kohya))  # diffusers sees lora_unet_* keys and converts them itself
    # every module of the file is loaded, by both paths: a diffusers file mixing diffusers' names (attention
    # projections) with peft's (proj_in) loaded in part before save_lora wrote one form
    modules = len(_modules(load_file(str(kohya))))
    assert _lora_layers(peft_pipe.unet) == _lora_layers(kohya_pipe.unet) == modules
    ours, theirs = _images(peft_pipe, latents), _images(kohya_pipe, latents)
    assert (ours - reference).abs().max() > 1e-3  # the LoRA changes the images: the comparison means something
    assert (ours - theirs).abs().max() <= ATOL

    # diffusers' converter alone writes alpha = rank (scale 1, not 1.5): that file gives other images
    naive = to_kohya(load_file(str(lora / LORA_FILE)), alpha=None)
    assert {t.item() for k, t in naive.items() if k.endswith(".alpha")} == {RANK}
    save_file(naive, str(lora.parent / "naive.safetensors"))
    naive_pipe = _pipe(cls, path)
    naive_pipe.load_lora_weights(str(lora.parent / "naive.safetensors"))
    assert (_images(naive_pipe, latents) - ours).abs().max() > 1e-3


def test_export_command_writes_the_same_file_for_an_older_lora(family, tmp_path, capsys):
    cls, path, lora = family
    written = next(lora.glob(f"*{SUFFIX}"))
    old = tmp_path / "old run"
    (old / "lora").mkdir(parents=True)
    for name in (LORA_FILE, "lora_config.json"):  # a run from before kohya files
        (old / "lora" / name).write_bytes((lora / name).read_bytes())
    assert main(["export", str(old), "--format", "kohya"]) == 0
    out = capsys.readouterr().out
    made = old / "lora" / f"old_run{SUFFIX}"
    assert str(made) in out and "modules" in out
    a, b = load_file(str(made)), load_file(str(written))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["export", str(old / "lora" / LORA_FILE), "--out", str(tmp_path)]) == 0  # into a folder
    assert (tmp_path / f"old_run{SUFFIX}").is_file()
    assert main(["export", str(old), "--out", str(tmp_path / "x" / "mine.safetensors")]) == 0
    assert load_file(str(tmp_path / "x" / "mine.safetensors")).keys() == a.keys()


def test_export_without_alpha_metadata_keeps_diffusers_default(tiny_dir, tmp_path):
    """A file with no rank/alpha record loads in diffusers with alpha = rank: its kohya file says the same."""
    from diffusers import StableDiffusionPipeline

    pipe = _pipe(StableDiffusionPipeline, tiny_dir)
    add_lora(pipe.unet, RANK, ALPHA, TARGETS)
    perturb_lora(pipe.unet)
    save_lora(pipe.unet, tmp_path / "f", RANK, ALPHA, TARGETS)
    save_file(load_file(str(tmp_path / "f" / LORA_FILE)), str(tmp_path / "bare.safetensors"))  # no metadata
    assert main(["export", str(tmp_path / "bare.safetensors")]) == 0
    kohya = load_file(str(tmp_path / f"bare{SUFFIX}"))
    assert {t.item() for k, t in kohya.items() if k.endswith(".alpha")} == {RANK}


@pytest.mark.parametrize("fixture,cls_name", [("tiny_sd3_dir", "StableDiffusion3Pipeline"),
                                               ("tiny_flux_dir", "FluxPipeline")], ids=["sd3", "flux"])
def test_transformer_loras_keep_diffusers_names_and_get_no_kohya_file(request, fixture, cls_name, tmp_path, capsys):
    """SD3/FLUX: the saved keys are ``transformer.<diffusers module path>.lora_A/lora_B.weight``, the names diffusers'
    load_lora_weights reads (it reloads them: tests/test_flow.py) and ComfyUI maps for these families
    (``transformer.{diffusers key}`` with ``.lora_A`` / ``.lora_B``); there is no kohya file, and export says why."""
    import diffusers

    from focusnfix.backbones.flow import FLOW_LORA_TARGETS

    cls = getattr(diffusers, cls_name)
    path = request.getfixturevalue(fixture)
    pipe = cls.from_pretrained(path, local_files_only=True)
    add_lora(pipe.transformer, RANK, ALPHA, FLOW_LORA_TARGETS)
    lora = write_lora_folder(tmp_path, "lora", 1, pipe.transformer, LoRAConfig(rank=RANK, alpha=ALPHA),
                             list(FLOW_LORA_TARGETS), cls, None, None, None)
    assert [p.name for p in lora.glob("*.safetensors")] == [LORA_FILE]
    keys = load_file(str(lora / LORA_FILE)).keys()
    fresh = cls.from_pretrained(path, local_files_only=True)
    linear = {n for n, m in fresh.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    assert keys and all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert {k[len("transformer."):].rsplit(".", 2)[0] for k in keys} <= linear  # diffusers' module paths
    fresh.load_lora_weights(lora, weight_name=LORA_FILE)
    assert fresh.get_list_adapters()["transformer"]
    rc = main(["export", str(lora)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "SD 1.x/2.x and SDXL" in err[0] and "transformer" in err[0]


@pytest.mark.parametrize("case", ["missing", "no-lora", "not-safetensors", "already-kohya", "out-suffix", "same-file"])
def test_export_bad_input_is_one_line_status_2(case, family, tmp_path, capsys):
    _, _, lora = family
    kohya = next(lora.glob(f"*{SUFFIX}"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "w.bin").write_bytes(b"x")
    argv, expected = {
        "missing": (["export", str(tmp_path / "nope")], "does not exist"),
        "no-lora": (["export", str(tmp_path / "empty")], "no pytorch_lora_weights.safetensors"),
        "not-safetensors": (["export", str(tmp_path / "w.bin")], "not a .safetensors file"),
        "already-kohya": (["export", str(kohya)], "already a kohya-format LoRA"),
        "out-suffix": (["export", str(lora), "--out", str(tmp_path / "x.txt")], "must be a .safetensors file"),
        "same-file": (["export", str(lora / LORA_FILE), "--out", str(lora / LORA_FILE)], "the source LoRA itself"),
    }[case]
    before = sorted((p.name, p.stat().st_mtime_ns) for p in lora.iterdir())
    rc = main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("focusnfix: error: ") and expected in err[0], err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in lora.iterdir()) == before


def test_export_disk_full_is_one_line_status_1_and_leaves_no_file(family, tmp_path, monkeypatch, capsys):
    import errno
    import os

    import safetensors.torch

    _, _, lora = family

    def full(tensors, path, *a, **kw):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    rc = main(["export", str(lora), "--out", str(tmp_path / "k.safetensors")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 1 and len(err) == 1 and "No space left on device" in err[0] and "k.safetensors" in err[0], err
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
