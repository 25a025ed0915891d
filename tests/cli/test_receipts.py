"""``nodeai receipts verify``: inclusion of real receipts in a batch committed to the real ReceiptRegistry."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from nodeai.chain.marketplace import synthetic_receipts
from nodeai.chain.receipts import MerkleTree, Receipt
from nodeai.chain.anvil import ANVIL_KEYS
from nodeai.serving.receipts import ReceiptSigner
from tests.cli.conftest import ROLES, Chain, assert_user_error, run, run_json


def _signed_file(path: Path, chain: Chain, receipt: Receipt, tree: MerkleTree, index: int) -> Path:
    """The receipt as the gateway serves it: signed by the provider, with its batch's root and proof."""
    signer = ReceiptSigner(ANVIL_KEYS[ROLES.index("provider")], chain.deployment.chain_id, chain.market.receipts.address)
    path.write_text(json.dumps({"receipt": signer.sign(receipt).to_json(), "root": "0x" + tree.root.hex(),
                                "proof": ["0x" + p.hex() for p in tree.proof(index)], "committed": True}))  # fmt: skip
    return path


def _receipt_file(path: Path, receipt: Receipt, tree: MerkleTree, index: int) -> Path:
    path.write_text(json.dumps({
        "receipt": {"request_hash": "0x" + receipt.request_hash.hex(), "provider": receipt.provider, "payer": receipt.payer,
                    "model_id": receipt.model_id, "tokens_in": receipt.tokens_in, "tokens_out": receipt.tokens_out,
                    "latency_ms": receipt.latency_ms, "amount": receipt.amount, "timestamp": receipt.timestamp},
        "root": "0x" + tree.root.hex(), "proof": ["0x" + p.hex() for p in tree.proof(index)],
    }))  # fmt: skip
    return path


def _committed(chain: Chain, count: int = 5) -> tuple[list[Receipt], MerkleTree]:
    receipts = synthetic_receipts(chain.market, chain.model_id, count, price_per_request=1_500)
    # NOTE: a root can be committed once: fresh request hashes give every batch a root of its own.
    receipts = [replace(r, request_hash=os.urandom(32)) for r in receipts]
    tree, _ = chain.market.commit_receipts(receipts)
    return receipts, tree


def test_valid_receipt_is_included(chain: Chain, wallet: str, tmp_path: Path) -> None:
    receipts, tree = _committed(chain)
    path = _receipt_file(tmp_path / "r.json", receipts[3], tree, 3)
    data = run_json("receipts", "verify", str(path))
    assert data["valid"] is True and data["root_committed"] is True and data["proof_matches_root"] is True
    assert data["root"] == "0x" + tree.root.hex() and data["amount"] == 1_500
    text = run("receipts", "verify", str(path))
    assert text.exit_code == 0 and text.stdout.startswith("valid:")


def test_signed_receipt_from_the_gateway(chain: Chain, wallet: str, tmp_path: Path) -> None:
    receipts, tree = _committed(chain)
    path = _signed_file(tmp_path / "signed.json", chain, receipts[2], tree, 2)
    data = run_json("receipts", "verify", str(path))
    assert data["valid"] is True and data["signature_valid"] is True

    doc = json.loads(path.read_text())
    doc["receipt"]["tokensOut"] += 1000  # the provider's signature no longer matches, nor the leaf
    path.write_text(json.dumps(doc))
    data = run_json("receipts", "verify", str(path), code=1)
    assert data["valid"] is False and data["signature_valid"] is False and "not signed by its provider" in data["reason"]

    doc = json.loads(_signed_file(path, chain, receipts[2], tree, 2).read_text())
    doc["receipt"]["chainId"] = 1
    path.write_text(json.dumps(doc))
    assert_user_error(run("receipts", "verify", str(path)), "signed for chain 1")


def test_tampered_receipt_fails_with_exit_1(chain: Chain, wallet: str, tmp_path: Path) -> None:
    receipts, tree = _committed(chain)
    path = _receipt_file(tmp_path / "r.json", receipts[1], tree, 1)
    doc = json.loads(path.read_text())
    doc["receipt"]["amount"] = 1   # billed 1,500, claims 1
    path.write_text(json.dumps(doc))

    data = run_json("receipts", "verify", str(path), code=1)
    assert data["valid"] is False and data["root_committed"] is True and data["proof_matches_root"] is False
    human = run("receipts", "verify", str(path))
    assert human.exit_code == 1 and "NOT in the committed batch" in human.stderr and "Traceback" not in human.stderr


def test_root_not_committed(chain: Chain, wallet: str, tmp_path: Path) -> None:
    receipts = synthetic_receipts(chain.market, chain.model_id, 3, price_per_request=7)
    tree = MerkleTree([r.leaf() for r in receipts])  # never committed
    path = _receipt_file(tmp_path / "r.json", receipts[0], tree, 0)
    data = run_json("receipts", "verify", str(path), code=1)
    assert data["valid"] is False and data["proof_matches_root"] is True and data["root_committed"] is False
    assert "not committed" in data["reason"]


def test_unreadable_receipt_files_are_user_errors(chain: Chain, wallet: str, tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    assert_user_error(run("receipts", "verify", str(bad_json)), "is not JSON")
    no_field = tmp_path / "partial.json"
    no_field.write_text(json.dumps({"receipt": {"provider": "0x" + "11" * 20}, "root": "0x" + "00" * 32, "proof": []}))
    assert_user_error(run("receipts", "verify", str(no_field)), "the receipt lacks", "request_hash")
    assert_user_error(run("receipts", "verify", str(tmp_path / "missing.json")), "No such file")
