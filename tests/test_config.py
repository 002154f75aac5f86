"""Config loading: YAML 1.2 booleans, dotted overrides into mappings, saved config reloads."""
from focusnfix.config import load_config
from focusnfix.runs.run_config import save_config


def test_yes_no_on_off_stay_strings_and_booleans_accept_words(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {path: tiny}\ndata: {prompts: [a]}\ntrain:\n  mixed_precision: no\n  reference_cache: off\n"
                    "  cpu: yes\n  lr: 1e-4\n")
    cfg = load_config(path, ["train.tf32=off"])
    assert cfg.train.mixed_precision == "no" and cfg.train.reference_cache == "off"
    assert cfg.train.cpu is True and cfg.train.tf32 is False and cfg.train.lr == 1e-4


def test_overrides_reach_into_reward_args_and_round_trip(tmp_path):
    cfg = load_config(None, ["model.path=tiny", "data.prompts=[a, b]", "reward.name=clip-score",
                             "reward.args.model=/some/clip", "reward.args.scale=50"])
    assert cfg.reward.args == {"model": "/some/clip", "scale": 50}
    nested = load_config(None, ["model.path=tiny", "data.prompts=[a]", "reward.args.terms=x", "reward.args.terms.0=y"])
    assert nested.reward.args == {"terms": {"0": "y"}}  # a scalar is replaced by a mapping, not indexed into
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


def test_reference_lists_every_config_key_with_its_default():
    from pathlib import Path

    from focusnfix.config import field_help

    reference = (Path(__file__).parents[1] / "docs" / "reference.md").read_text()
    for key, default, _ in field_help():
        assert f"| `{key}` | `{default}` |" in reference, f"docs/reference.md's config table is stale for {key}"


def test_reference_config_table_matches_the_schema_help():
    """tools/readme_config_table.py --check: every row's default and help text as the schema has them."""
    import importlib.util
    from pathlib import Path

    tool = Path(__file__).parents[1] / "tools" / "readme_config_table.py"
    spec = importlib.util.spec_from_file_location("_readme_table", tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run: python tools/readme_config_table.py"
