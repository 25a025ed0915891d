"""Running the gateway from its config: options, the keystore, plaintext keys refused, API keys created."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import openai
import pytest
from eth_account import Account

from nodeai.keystore import create_keystore
from nodeai.serving.client import receipt_from_usage, verify_receipt
from nodeai.serving.engines.base import Engine
from nodeai.serving.gateway.__main__ import main, parser
from nodeai.serving.gateway.config import GatewayConfigError, build_app, load_config

from .conftest import EMBEDDER, PROVIDER_KEY, running


def test_plaintext_keys_are_refused_outside_dev(tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError, match="refused outside development: import it into an encrypted keystore"):
        load_config(None, {"dev_private_key": PROVIDER_KEY})
    assert load_config(None, {"dev_private_key": PROVIDER_KEY, "dev": True}).dev


def test_options_are_checked_and_named(tmp_path: Path) -> None:
    no_chain = tmp_path / "no-chain.json"
    no_chain.write_text('{"rpc_url": null}')
    with pytest.raises(GatewayConfigError, match="takes vouchers, which need rpc_url and deployments"):
        load_config(no_chain)
    with pytest.raises(GatewayConfigError, match="takes API keys, which need api_keys_file"):
        load_config(None, {"auth": "api_key"})
    toml = tmp_path / "gateway.toml"
    toml.write_text('port = 9100\nauth = "api_key"\napi_keys_file = "keys.json"\n[limits]\nmax_tokens_cap = 7\n')
    config = load_config(toml, {"port": 9200})
    assert (config.port, config.limits.max_tokens_cap, config.auth) == (9200, 7, "api_key")
    toml.write_text("[limits]\nmax_tokens_cap = 0\n")
    with pytest.raises(GatewayConfigError, match="limits.max_tokens_cap: Input should be greater than or equal to 1"):
        load_config(toml)
    with pytest.raises(GatewayConfigError, match="no gateway config at"):
        load_config(tmp_path / "missing.toml")
    flags = parser().format_help()
    assert "--port" in flags and "--min-voucher-validity-s" in flags and "A voucher must stay valid" in flags


def test_a_gateway_runs_from_its_config_with_the_key_in_a_keystore(embed_engine: Engine, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    keystore = tmp_path / "provider.json"
    # NOTE: a small scrypt cost keeps the test fast; the default is 2**18.
    address = create_keystore(keystore, "correct horse", PROVIDER_KEY, scrypt_n=2**4)
    monkeypatch.setenv("GATEWAY_TEST_PASSWORD", "correct horse")
    config_path = tmp_path / "gateway.json"
    config_path.write_text(
        '{"auth": "api_key", "api_keys_file": "%s", "keystore": "%s", "password_env": "GATEWAY_TEST_PASSWORD", '
        '"database": "%s", "offchain_prices": {"%s": 100}}'
        % (tmp_path / "keys.json", keystore, tmp_path / "gateway.db", EMBEDDER)
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--config", str(config_path), "--create-api-key", "ci"]) == 0
    key = out.getvalue().strip()
    assert key.startswith("nk_")
    app = build_app(load_config(config_path), engines=[embed_engine])
    with running(app) as server, openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0) as client:
        reply = client.embeddings.create(model=EMBEDDER, input="configured")
        signed = receipt_from_usage(reply.usage)
        assert verify_receipt(signed, address) and address == Account.from_key(PROVIDER_KEY).address
        assert signed.receipt.amount == -(-reply.usage.prompt_tokens * 100 // 1000)
    monkeypatch.setenv("GATEWAY_TEST_PASSWORD", "wrong")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["--config", str(config_path)]) == 2
    assert "error:" in err.getvalue()
