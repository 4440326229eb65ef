"""Config validation, canonical hashing and round trips (no torch needed)."""
import pytest
import yaml

from cl.config import RunConfig, load_run_config
from cl.errors import ConfigError

BASE = {
    "scenario": {"name": "split_digits", "n_experiences": 5},
    "model": {"name": "mlp"},
    "strategy": {"name": "replay", "mem_size": 100},
    "train": {"epochs": 2, "lr": 0.05},
    "seed": 3,
}


def make(**changes):
    raw = {**BASE, **changes}
    return RunConfig.from_dict(raw)


def test_hash_ignores_key_order_and_spelled_out_defaults():
    reordered = {k: BASE[k] for k in reversed(list(BASE))}
    reordered["strategy"] = {"mem_size": 100, "name": "replay"}
    explicit = {**BASE, "train": {**BASE["train"], "batch_size": 32, "optimizer": "sgd"},
                "scenario": {**BASE["scenario"], "seed": 0, "shuffle_classes": True}}
    assert make().config_hash == RunConfig.from_dict(reordered).config_hash
    assert make().config_hash == RunConfig.from_dict(explicit).config_hash


@pytest.mark.parametrize("change", [
    {"seed": 4},
    {"train": {"epochs": 2, "lr": 0.051}},
    {"strategy": {"name": "replay", "mem_size": 101}},
    {"scenario": {"name": "split_digits", "n_experiences": 2}},
    {"scenario": {"name": "split_digits", "seed": 1}},
    {"model": {"name": "mlp", "hidden": [64]}},
])
def test_hash_changes_with_any_value(change):
    assert make(**change).config_hash != make().config_hash


def test_group_hash_ignores_training_seed_but_not_scenario_seed():
    assert make(seed=0).group_hash == make(seed=1).group_hash
    assert make(seed=0).config_hash != make(seed=1).config_hash
    other_order = make(scenario={"name": "split_digits", "seed": 7})
    assert other_order.group_hash != make().group_hash


def test_experiment_name_is_not_part_of_the_identity():
    assert make(experiment="a").config_hash == make(experiment="b").config_hash


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = make()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    again = load_run_config(path)
    assert again == cfg and again.config_hash == cfg.config_hash


def test_defaults_are_resolved_into_the_config():
    cfg = make()
    assert cfg.scenario.options["n_experiences"] == 5
    assert cfg.scenario.options["shuffle_classes"] is True
    assert cfg.model.options == {"hidden": [256, 256], "dropout": 0.0}
    assert cfg.train.batch_size == 32


def test_unknown_strategy_lists_registered_names():
    with pytest.raises(ConfigError) as err:
        make(strategy={"name": "replya"})
    message = str(err.value)
    assert "strategy.name" in message and "'replya'" in message
    for name in ("naive", "replay", "ewc", "lwf", "icarl", "gdumb", "er_ace", "dark_er", "cumulative"):
        assert name in message


def test_invalid_field_names_its_path_and_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        make(strategy={"name": "replay", "mem_size": 0, "memory": 5}, train={"optimizer": "rmsprop"})
    problems = err.value.problems
    assert any(p.startswith("strategy.mem_size:") and "greater than or equal to 1" in p for p in problems)
    assert any(p.startswith("strategy.memory:") and "replay' accepts: mem_size" in p for p in problems)
    assert any(p.startswith("train.optimizer:") and "'sgd' or 'adam'" in p for p in problems)


def test_missing_section_and_unknown_top_level_key():
    raw = {k: v for k, v in BASE.items() if k != "model"}
    with pytest.raises(ConfigError, match="model: missing"):
        RunConfig.from_dict(raw)
    with pytest.raises(ConfigError, match="epoch: unknown field; allowed: experiment, scenario"):
        RunConfig.from_dict({**BASE, "epoch": 3})
    with pytest.raises(ConfigError, match="train.epoch: unknown field; allowed: epochs, batch_size"):
        RunConfig.from_dict({**BASE, "train": {"epoch": 3}})


def test_scenario_split_options_are_checked_together():
    cfg = make(scenario={"name": "split_digits", "classes_per_experience": [4, 2, 2, 2]})
    assert cfg.scenario.options["n_experiences"] == 4
    with pytest.raises(ConfigError, match="disagrees with classes_per_experience"):
        make(scenario={"name": "split_digits", "n_experiences": 5, "classes_per_experience": [5, 5]})


def test_user_module_import_errors_are_config_errors():
    with pytest.raises(ConfigError, match="imports: cannot import module 'no_such_module_xyz'"):
        RunConfig.from_dict({**BASE, "imports": ["no_such_module_xyz"]})


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("scenario: {name: split_digits\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_run_config(path)


def test_flat_params_are_dotted_strings():
    params = make().flat_params()
    assert params["strategy.mem_size"] == "100"
    assert params["model.hidden"] == "[256, 256]"
    assert params["seed"] == "3"
    assert yaml.safe_load(make().to_yaml())["strategy"] == {"name": "replay", "mem_size": 100}


def test_component_options_are_validated_once_from_yaml_to_the_builder(monkeypatch):
    """resolve_component validates the options; preflight and the runner reuse that `Params`, not a new one."""
    from cl.config import component_params, resolve_component
    from cl.registry import STRATEGIES

    component = resolve_component("strategy", {"name": "replay", "mem_size": 123})
    params = component_params("strategy", component)
    assert params.mem_size == 123
    entry = STRATEGIES.get("replay")
    calls = []
    original = entry.params.model_validate
    monkeypatch.setattr(entry.params, "model_validate", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert component_params("strategy", component) is params and not calls
