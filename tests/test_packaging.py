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
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(tree)],
                   check=True, capture_output=True)
    (wheel,) = out.glob("focusnfix-*.whl")
    site = out / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def test_wheel_ships_every_config(wheel_site):
    shipped = {p.relative_to(wheel_site / "focusnfix" / "configs") for p in (wheel_site / "focusnfix" / "configs").rglob("*.yaml")}
    folder = (ROOT / "configs").resolve()  # the checkout's configs/ links to src/focusnfix/configs
    in_repo = {p.relative_to(folder) for p in folder.rglob("*.yaml")}
    assert shipped == in_repo and Path("world-artifact.yaml") in shipped


def test_demo_runs_from_the_installed_package(wheel_site, tmp_path):
    """Run from an empty folder with only the unpacked wheel on the path: nothing from the checkout."""
    env = {**os.environ, "PYTHONPATH": str(wheel_site), "OMP_NUM_THREADS": "1"}
    code = ("import focusnfix, sys; assert focusnfix.__file__.startswith(sys.argv[1]), focusnfix.__file__; "
            "from focusnfix.demo import main; sys.exit(main(['--model', 'tiny', '--out', 'demo', '--steps', '1', '--seeds', '7', '--prompts', '1']))")
    done = subprocess.run([sys.executable, "-c", code, str(wheel_site)], cwd=tmp_path, env=env, capture_output=True, text=True)
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
