"""The wheel is complete: an installed package (no source checkout) has its configs, so the demo runs."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    """The project's wheel, built without network (the venv's setuptools) and unpacked as site-packages."""
    out = tmp_path_factory.mktemp("wheel")
    tree = out / "tree"  # a copy, so concurrent builds don't share the checkout's build/ folder
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(tree)],
                   check=True, capture_output=True)
    (wheel,) = out.glob("focusnfix-*.whl")
    site = out / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def test_wheel_ships_every_config(wheel_site):
    shipped = {p.relative_to(wheel_site / "focusnfix" / "configs")
               for p in (wheel_site / "focusnfix" / "configs").rglob("*.yaml")}
    folder = (ROOT / "configs").resolve()  # the checkout's configs/ links to src/focusnfix/configs
    in_repo = {p.relative_to(folder) for p in folder.rglob("*.yaml")}
    assert shipped == in_repo and Path("world-artifact.yaml") in shipped


def test_demo_runs_from_the_installed_package(wheel_site, tmp_path):
    """Run from an empty folder with only the unpacked wheel on the path: nothing from the checkout."""
    env = {**os.environ, "PYTHONPATH": str(wheel_site), "OMP_NUM_THREADS": "1"}
    code = ("import focusnfix, sys; assert focusnfix.__file__.startswith(sys.argv[1]), focusnfix.__file__; "
            "from focusnfix.cli.demo import main; "
            "sys.exit(main(['--model', 'tiny', '--out', 'demo', '--steps', '1', '--seeds', '7', '--prompts', '1']))")
    done = subprocess.run([sys.executable, "-c", code, str(wheel_site)], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "demo" / "eval" / "samples.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"base", "draft", "fnf"}


def test_wheel_ships_the_rating_app(wheel_site):
    """`focusnfix rate` renders templates and serves static files from the installed package."""
    app = wheel_site / "focusnfix" / "rating"
    shipped = {p.relative_to(app).as_posix() for p in app.rglob("*") if p.suffix in (".html", ".css", ".js")}
    assert {"templates/task.html", "templates/start.html", "static/rate.js", "static/rate.css"} <= shipped


def test_packaged_config_by_name(tmp_path, monkeypatch):
    from focusnfix.config import load_config
    from focusnfix.errors import ConfigError

    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert load_config("world-artifact").model.path == "world"
    assert load_config("configs/world-artifact.yaml").model.path == "world"
    with pytest.raises(ConfigError, match="packaged configs: .*world-safety"):
        load_config("no-such-config")


def test_wheel_metadata_and_version(wheel_site, capsys):
    from focusnfix import __version__
    from focusnfix.cli import main

    (info,) = wheel_site.glob("focusnfix-*.dist-info")
    meta = (info / "METADATA").read_text()
    assert f"Version: {__version__}" in meta and "License-Expression: Apache-2.0" in meta
    assert "License-File: LICENSE" in meta and (info / "licenses" / "LICENSE").is_file()
    assert "Keywords:" in meta and "Classifier: Topic :: Scientific/Engineering :: Artificial Intelligence" in meta
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"focusnfix {__version__}"


# Declared floors (pyproject.toml) must be at least these releases; each is one the code or the other floors
# need, with the reason. `make test-floors` installs exactly the declared floors (tools/floors.py) in
# .venv-floors and runs the tests that train, save lora/, reload it in diffusers and sample on them.
KNOWN_MINIMUMS = {
    "torch": ("2.8", "train.fsdp calls FSDP2's set_force_sum_reduction_for_comms (new in 2.8; fully_shard in 2.6)"),
    "diffusers": ("0.34", "save_lora_weights(unet_lora_adapter_metadata=...) records rank/alpha in the LoRA file; with "
                  "0.33 a run trains to the end, then fails with a TypeError while saving lora/"),
    "peft": ("0.15", "diffusers 0.34 refuses to import with an older peft"),
    "safetensors": ("0.4.3", "accelerate 0.34 requires it: floors that pip cannot install together are untested"),
    "flask": ("3.1", "the oldest release the rating tests ran on (the Host check is the app's own since issue 26)"),
}
BUILD_MINIMUMS = {
    "setuptools": ("77.0.1", "the SPDX `license` string and `license-files` (PEP 639) need 77; 77.0.0 was yanked"),
}


def _floors(**kw):
    import importlib.util

    spec = importlib.util.spec_from_file_location("floors", ROOT / "tools" / "floors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.floors(ROOT / "pyproject.toml", **kw)


@pytest.mark.parametrize("build", [False, True], ids=["runtime", "build"])
def test_declared_floors_meet_the_known_minimums(build):
    from packaging.version import Version

    declared = {**_floors(build=build), **({} if build else _floors(all_extras=True))}
    for name, (minimum, reason) in (BUILD_MINIMUMS if build else KNOWN_MINIMUMS).items():
        assert declared.get(name) is not None, f"{name} declares no floor"
        assert Version(declared[name]) >= Version(minimum), f"{name}>={declared[name]} is too low: {reason}"


def test_every_dependency_declares_a_tested_floor(capsys):
    """tools/floors.py prints one exact pin per dependency (what `make test-floors` installs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("floors", ROOT / "tools" / "floors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for args in ([], ["--all-extras"], ["--build"]):
        assert module.main(args) == 0
    lines = capsys.readouterr().out.split()
    assert all("==" in line for line in lines if line != "wheel")
    names = {line.split("==")[0] for line in lines}
    assert {"torch", "diffusers", "transformers", "peft", "accelerate", "onnx", "flask", "pytest",
            "setuptools"} <= names
    assert "tools/floors.py --all-extras" in (ROOT / "Makefile").read_text()  # make test-floors installs every extra


def test_installed_diffusers_saves_lora_adapter_metadata():
    """What lora.save_lora calls exists in this environment (the reason for the diffusers floor)."""
    import inspect

    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline):
        params = inspect.signature(cls.save_lora_weights).parameters
        prefix = "unet" if "unet_lora_layers" in params else "transformer"
        assert f"{prefix}_lora_adapter_metadata" in params, cls.__name__


def test_makefile_checks_the_floors_and_says_what_it_installs():
    text = (ROOT / "Makefile").read_text()
    assert "\ntest-floors:" in text and "tools/floors.py --build" in text and "--no-build-isolation" in text
    lock_install = next(line for line in text.splitlines() if "-r requirements/lock.txt" in line)
    assert "--quiet" not in lock_install  # pip shows its progress during the two-minute install
    before = text.split(lock_install)[0].splitlines()[-1]
    assert "echo" in before and "minutes" in before
