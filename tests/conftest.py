"""Shared fixtures: everything offline, tiny real diffusers components built in code."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One OpenMP thread from process start (torch picks CPU kernels at start-up): in-process runs and
# the subprocesses the tests launch then compute bit-identically, and 2 cores are not oversubscribed.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models gain nothing from more threads; avoids oversubscription


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A saved tiny random SD pipeline folder (epsilon prediction, 32 px)."""
    from focusnfix.backbones.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny-sd")
    build_tiny_pipeline(path)
    return path


@pytest.fixture(scope="session")
def tiny_v_dir(tmp_path_factory):
    """A saved tiny random SD 2.x-style pipeline folder (v-prediction, linear projections)."""
    from focusnfix.backbones.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny-sd-v")
    build_tiny_pipeline(path, prediction_type="v_prediction", seed=1, sd2_style=True)
    return path


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory):
    """A saved tiny random SD3.5-M-style pipeline folder (three text encoders, flow matching, 32 px)."""
    from focusnfix.backbones.tiny_flow import build_tiny_sd3_pipeline

    path = tmp_path_factory.mktemp("tiny-sd3")
    build_tiny_sd3_pipeline(path)
    return path


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    """A saved tiny random FLUX.1-dev-style pipeline folder (guidance embedding, packed latents; give it a
    resolution: without a sample_size the pipeline's default is 128 latent px)."""
    from focusnfix.backbones.tiny_flow import build_tiny_flux_pipeline

    path = tmp_path_factory.mktemp("tiny-flux")
    build_tiny_flux_pipeline(path)
    return path


def base_overrides(tiny_dir, out, **extra):
    """Dotted overrides for a fast tiny training run."""
    values = {
        "model.path": str(tiny_dir), "data.prompts": "[a red circle, a blue square]", "sampler.steps": 4,
        "sampler.k": 2, "train.steps": 2, "train.lr": 0.01, "train.output_dir": str(out), "mask.threshold": 0.3,
        "lora.rank": 2,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def tiny_xl_dir(tmp_path_factory):
    """A saved tiny random SDXL pipeline folder (two text encoders, 32 px)."""
    from focusnfix.backbones.tiny import build_tiny_sdxl_pipeline

    path = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_sdxl_pipeline(path)
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` exercise GPU paths: skipped where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def interrupted_then_resumed(tiny_dir, out, stop_at: int, **extra):
    """A run stopped after its step-``stop_at`` checkpoint (what ``train`` does before the process dies), then
    resumed with ``--resume`` to ``train.steps``; returns the resumed Trainer."""
    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer

    interrupted = Trainer(load_config(None, base_overrides(tiny_dir, out, **extra)))
    interrupted.out.mkdir(parents=True)
    for _ in range(stop_at):
        interrupted.train_step()
    interrupted.save_checkpoint()
    del interrupted
    resumed = Trainer(load_config(None, base_overrides(tiny_dir, out, **extra)))
    resumed.train(resume=True, progress=False)
    return resumed


def perturb_lora(unet, seed=0):
    """Move every LoRA B away from its zero init (N(0, 0.05²), seeded), so that Î differs from Î0."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
