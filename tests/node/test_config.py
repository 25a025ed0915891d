"""The daemon's config: file + environment overrides, every option documented, private keys refused."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeai.node.config import (
    ConfigError, NodeConfig, PlaintextKeyError, env_overrides, example_config, find_plaintext_key, load_config,
)  # fmt: skip

KEY_HEX = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_example_lists_every_option_with_its_description_and_loads_back(tmp_path: Path) -> None:
    text = example_config()

    def walk(model: type, prefix: str) -> None:
        for name, field in model.model_fields.items():
            sub = field.default_factory
            if isinstance(sub, type) and hasattr(sub, "model_fields") and name != "models":
                assert f"[{name}]" in text
                walk(sub, name)
                continue
            assert field.description, f"{prefix}.{name} has no docstring"
            first_line = field.description.strip().splitlines()[0].strip()
            assert f"# {first_line}" in text, f"{prefix}.{name}: description missing from the example"

    walk(NodeConfig, "")
    config = load_config(write(tmp_path, text), environ={})
    assert config.provider.models[0].id == 1 and config.provider.models[0].price_per_1k_tokens == 2_000
    assert config.chain.chain_id == 31337
    # relative paths are relative to the config file, not the working directory
    assert config.chain.deployments == tmp_path / "deployments" / "31337.json"


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[chain]\nrpc_url = "http://file:8545"\n[claim]\ncapacity = 2\n')
    env = {"NODEAI_NODE__CHAIN__RPC_URL": "http://env:8545", "NODEAI_NODE__CLAIM__CAPACITY": "9",
           "NODEAI_NODE__PROVIDER__MODELS": '[{"id": 3, "price_per_1k_tokens": 5}]', "UNRELATED": "x"}
    config = load_config(path, environ=env)
    assert config.chain.rpc_url == "http://env:8545"
    assert config.claim.capacity == 9
    assert [(m.id, m.price_per_1k_tokens) for m in config.provider.models] == [(3, 5)]


@pytest.mark.parametrize("text, message", [
    ("[chain]\nrcp_url = 'x'\n", r"chain.rcp_url: unknown option"),
    ("[claim]\ncapacity = 'lots'\n", r"claim.capacity: .*integer.*'lots'"),
    ("[claim]\ncapacity = 0\n", r"claim.capacity: .*greater than or equal to 1"),
    ("[provider]\nmodels = [{id = 1, price_per_1k_tokens = 1}, {id = 1, price_per_1k_tokens = 2}]\n", "listed twice"),
    ("[feed]\nmode = 'store'\n", "needs db_url"),
    ("[tx]\nbump_percent = 5\n", r"tx.bump_percent"),
    ("this is = = not toml", "not valid TOML"),
])  # fmt: skip
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), environ={})


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nodeai node init --config"):
        load_config(tmp_path / "absent.toml", environ={})


@pytest.mark.parametrize("text", [
    f'[keystore]\nprivate_key = "0x{KEY_HEX}"\n',
    f'[chain]\nrpc_url = "{KEY_HEX}"\n',
    '[provider]\nmnemonic = "test test test test test test test test test test test junk"\n',
    f'[engine.options]\nsigner = "0x{KEY_HEX}"\n',
])  # fmt: skip
def test_plaintext_keys_are_refused_with_the_import_command(tmp_path: Path, text: str) -> None:
    with pytest.raises(PlaintextKeyError, match=r"nodeai login --import"):
        load_config(write(tmp_path, text), environ={})


def test_plaintext_key_in_the_environment_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlaintextKeyError, match="NODEAI_NODE__KEYSTORE__PRIVATE_KEY"):
        load_config(None, environ={"NODEAI_NODE__KEYSTORE__PRIVATE_KEY": "0x" + KEY_HEX})


@given(st.dictionaries(st.sampled_from(["a", "b", "rpc", "path"]),
                       st.one_of(st.text(max_size=20), st.integers(), st.booleans()), max_size=4),
       st.binary(min_size=32, max_size=32), st.sampled_from(["a", "b"]))
def test_a_key_anywhere_is_found(data: dict, key: bytes, where: str) -> None:
    nested = {"section": dict(data, **{where: key.hex()})}
    assert find_plaintext_key(nested, "") == f"section.{where}"


@given(st.recursive(st.one_of(st.integers(), st.booleans(), st.text(alphabet="abcxyz:/._- ", max_size=30)),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("uvw"), inner, max_size=3),
                    max_leaves=8))
def test_ordinary_values_are_not_keys(value: object) -> None:
    assert find_plaintext_key({"section": value}, "") is None


def test_env_overrides_nesting_and_bad_json() -> None:
    assert env_overrides({"NODEAI_NODE__A__B__C": "1", "NODEAI_NODE__A__D": "2"}) == {"a": {"b": {"c": "1"}, "d": "2"}}
    with pytest.raises(ConfigError, match="not valid JSON"):
        env_overrides({"NODEAI_NODE__PROVIDER__MODELS": "[{bad"})


def test_example_is_valid_toml() -> None:
    assert "chain" in tomllib.loads(example_config())
