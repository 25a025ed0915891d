"""``nodeai models deploy|list``: publish a model artifact on IPFS and register it on chain.

``deploy`` pins the weights (one file, or every file of a folder) with a
progress bar, pins a manifest describing them, then sends
``ModelRegistry.registerModel(artifactCid, manifestCid, pricePer1kTokens,
revenueShareBps)``. The wallet is unlocked and the network checked before
the (slow) pinning starts, so a wrong password never wastes an upload.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from nodeai.cli.context import CliContext, example, pass_ctx, signer_options
from nodeai.cli.errors import UserError
from nodeai.cli.output import check_amount, emit, parse_amount, short, table

MAX_SHARE_BPS = 5_000
FORMATS = {".gguf": "gguf", ".onnx": "onnx", ".safetensors": "safetensors", ".bin": "pytorch", ".pt": "pytorch",
           ".pth": "pytorch", ".json": "json", ".model": "sentencepiece"}  # fmt: skip


@click.group("models")
@example("""
nodeai models deploy ./models/llm-small --price 0.002 --share 1000
nodeai models list --json
""")
def models() -> None:
    """Models: publish weights to IPFS and the registry, list what is registered."""


def artifact_files(path: Path) -> list[tuple[Path, str]]:
    """(file, path relative to the artifact) for a file or every file of a folder, in a stable order."""
    if path.is_file():
        return [(path, path.name)]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise UserError(f"{path} holds no files to publish", "point PATH at the model file or a folder with its files")
    return [(p, p.relative_to(path).as_posix()) for p in files]


def _progress(bar: Any, size: int) -> Callable[..., None]:
    """A callback for ``ArtifactStore.add_file`` that moves ``bar`` by the bytes added since the last call."""
    done = 0

    def update(added: int, *_: Any) -> None:
        nonlocal done
        # NOTE: the store reports the running total of bytes added for this file.
        added = min(int(added), size)
        if added > done:
            bar.update(added - done)
            done = added

    update.finish = lambda: update(size)  # type: ignore[attr-defined]
    return update


def pin_artifact(obj: CliContext, path: Path, name: str) -> dict[str, Any]:
    """Pin every file and the manifest; returns CIDs and the manifest document."""
    files = artifact_files(path)
    total = sum(p.stat().st_size for p, _ in files)
    entries = []
    with obj.ipfs() as store:
        with click.progressbar(length=max(total, 1), label=f"pinning {path.name}", file=click.get_text_stream("stderr"),
                               show_pos=False, show_percent=True, show_eta=True) as bar:  # fmt: skip
            for file, rel in files:
                size = file.stat().st_size
                callback = _progress(bar, size)
                cid = store.add_file(file, progress=callback)
                callback.finish()  # type: ignore[attr-defined]
                entries.append({"path": rel, "cid": cid, "size": size})
        if path.is_file():
            artifact_cid = entries[0]["cid"]
        else:
            # NOTE: a folder is published as an index of its files' CIDs; the registry holds one artifact CID.
            index = {"type": "nodeai.model-files", "files": entries}
            artifact_cid = store.add_bytes(json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
        formats = sorted({FORMATS.get(Path(e["path"]).suffix.lower(), "other") for e in entries} - {"json", "other"})
        manifest = {"type": "nodeai.model-manifest", "version": 1, "name": name, "artifact": artifact_cid,
                    "format": formats[0] if len(formats) == 1 else (formats or ["other"]), "size": total,
                    "files": entries}  # fmt: skip
        manifest_cid = store.add_bytes(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    return {"artifact_cid": artifact_cid, "manifest_cid": manifest_cid, "manifest": manifest}


@models.command("deploy")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--price", required=True, help="List price per 1,000 tokens, in token units (e.g. 0.002).")
@click.option("--share", "share_bps", type=click.IntRange(0, MAX_SHARE_BPS), default=0, show_default=True,
              help="Revenue share of every payment for this model, in basis points (max 5000 = 50%).")
@click.option("--name", help="Name in the manifest (default: the file or folder name).")
@click.option("--raw", is_flag=True, help="--price is in base units (integer) instead of token units.")
@signer_options
@pass_ctx
@example("""
nodeai models deploy ./models/llm-small --price 0.002 --share 1000
nodeai models deploy ./smollm2-135m.Q4_1.gguf --price 2000 --raw --json
""")
def deploy(obj: CliContext, path: Path, price: str, share_bps: int, name: str | None, raw: bool) -> None:
    """Pin a model (file or folder) to IPFS and register it on chain; prints its model id and CID.

    Pins to the kubo RPC API of --ipfs-api when set, else to the embedded IPFS
    node in $NODEAI_HOME/ipfs (keep a node serving the CID so providers can fetch it).
    """
    check_amount(price, "price")
    price_units = parse_amount(price, obj.decimals, raw, "price")
    registry = obj.contract("ModelRegistry")
    obj.account()  # NOTE: unlock before the upload: a wrong password fails fast
    pinned = pin_artifact(obj, path, name or path.name)
    result = obj.send(registry.functions.registerModel(pinned["artifact_cid"], pinned["manifest_cid"], price_units, share_bps),
                      "registerModel")  # fmt: skip
    event = result.event("ModelRegistered")
    data = {"model_id": event["modelId"], "artifact_cid": pinned["artifact_cid"], "manifest_cid": pinned["manifest_cid"],
            "owner": event["owner"], "price_per_1k_tokens": price_units, "revenue_share_bps": share_bps,
            "size": pinned["manifest"]["size"], "files": len(pinned["manifest"]["files"]), "tx": result.tx_hash}  # fmt: skip
    emit(obj.json, data, lambda: "\n".join([
        f"model id  {data['model_id']}",
        f"CID       {data['artifact_cid']}",
        f"manifest  {data['manifest_cid']}",
        f"price     {obj.fmt(price_units)} per 1k tokens, owner share {share_bps / 100:g}%",
        f"next: providers serve it with `nodeai node ...`; agents use it with `nodeai agents create NAME --model {data['model_id']}`",
    ]))  # fmt: skip


@models.command("list")
@click.option("--mine", is_flag=True, help="Only models this wallet owns.")
@click.option("--owner", help="Only models of this owner address.")
@click.option("--agents", "include_agents", is_flag=True, help="List agents too.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@pass_ctx
@example("""
nodeai models list
nodeai models list --mine --json
""")
def list_models(obj: CliContext, mine: bool, owner: str | None, include_agents: bool, limit: int) -> None:
    """List registered models (from the indexer)."""
    if mine and owner:
        raise UserError("--mine and --owner both name the owner", "give one of them")
    params: dict[str, Any] = {"owner": obj.address if mine else owner}
    items = list(obj.indexer.pages("/models", params | {"kind": "model"}, limit))
    if include_agents:
        items += list(obj.indexer.pages("/agents", params, limit))
        items.sort(key=lambda m: int(m.get("model_id") or 0))

    def human() -> str:
        if not items:
            return "no models registered yet: publish one with `nodeai models deploy PATH --price P`"
        rows = [[m.get("model_id"), m.get("kind"), short(m.get("owner")), m.get("version"),
                 obj.fmt(int(m.get("price_per_1k_tokens") or 0)), f"{int(m.get('revenue_share_bps') or 0) / 100:g}%",
                 "yes" if m.get("deprecated") else "", m.get("artifact_cid")] for m in items]  # fmt: skip
        return table(rows, ["id", "kind", "owner", "version", "price/1k", "share", "deprecated", "artifact CID"])

    emit(obj.json, {"items": items, "count": len(items)}, human)
