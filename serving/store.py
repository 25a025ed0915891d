"""The gateway's persistent state in one SQLite file: charges, vouchers, receipts.

What must survive a restart or a crash, and why it lives together:

* ``channels``: per (payer, model) the total charged and what the escrow has
  redeemed. Forgetting a charge would let a client replay an old voucher
  whose headroom was already spent.
* ``vouchers``: the signed vouchers the provider will redeem, so a restart
  never loses money already signed over.
* ``receipts`` + ``batches``: the receipt outbox. Receipts are committed on
  chain in batches as Merkle roots; a batch is written (``prepared``) before
  its transaction is sent, so a crash in between is finished on restart
  instead of committing a different root, and proofs stay retrievable.

A served request is one transaction: charge + voucher + receipt, so none of the
three can exist without the others.

# NOTE: durability settings. WAL with ``synchronous=NORMAL``: a commit appends to the
# WAL without an fsync; the WAL is synced at checkpoints. A crashed *process*
# (kill -9, OOM) loses nothing, since committed pages are in the OS cache. Only
# a power loss or kernel crash can roll back the last commits since the last
# checkpoint; what is lost then is bounded (a few requests' charges, whose
# vouchers the clients would still hold), and in exchange no request waits for
# a disk flush, which on a busy gateway would be an fsync storm (one per
# request). ``FULL`` would close that window at ~1 fsync per request.

Amounts are uint256: they are stored as 78-digit zero-padded decimal TEXT, so
SQL comparisons and MAX() order them numerically.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator


from nodeai.chain.receipts import MerkleTree
from nodeai.chain.vouchers import Voucher
from nodeai.errors import NodeAIError

from .eth_fast import checksum
from .receipts import SignedReceipt, receipt_from_json, receipt_to_json

__all__ = ["GatewayStore", "StoreMismatch", "RedeemableVoucher", "ReceiptBatch", "ReceiptProof", "ChannelRecord"]

SCHEMA_VERSION = 1
_WIDTH = 78  # digits of 2**256 - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channels (
    payer TEXT NOT NULL, model_id INTEGER NOT NULL,
    charged TEXT NOT NULL, redeemed TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (payer, model_id)
);
CREATE TABLE IF NOT EXISTS vouchers (
    payer TEXT NOT NULL, model_id INTEGER NOT NULL, cumulative TEXT NOT NULL,
    expiry INTEGER NOT NULL, signature BLOB NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (payer, model_id, cumulative)
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY, root BLOB NOT NULL UNIQUE, count INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('prepared', 'committed')), tx_hash TEXT, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, request_hash BLOB NOT NULL UNIQUE, leaf BLOB NOT NULL,
    body TEXT NOT NULL, batch_id INTEGER REFERENCES batches(id), batch_index INTEGER
);
CREATE INDEX IF NOT EXISTS receipts_unbatched ON receipts (id) WHERE batch_id IS NULL;
"""


def _amount(value: int) -> str:
    return str(value).zfill(_WIDTH)


class StoreMismatch(NodeAIError, ValueError):
    def __init__(self, path: str, stored: str, provider: str):
        super().__init__(f"the gateway database {path} belongs to provider {stored}, not {provider}: "
                         "point the gateway at its own database (database_path) or use that provider's key")


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    payer: str
    model_id: int
    charged: int
    redeemed: int


@dataclass(frozen=True, slots=True)
class RedeemableVoucher:
    """The voucher to redeem for one channel: the highest one not above the charged total."""

    voucher: Voucher
    signature: bytes
    charged: int
    redeemed: int

    @property
    def gain(self) -> int:
        """What redeeming it adds (before the deposit cap)."""
        return self.voucher.cumulative_amount - self.redeemed


@dataclass(frozen=True, slots=True)
class ReceiptBatch:
    id: int
    root: bytes
    receipts: list[SignedReceipt]
    status: str
    tx_hash: str | None = None


@dataclass(frozen=True, slots=True)
class ReceiptProof:
    receipt: SignedReceipt
    root: bytes | None
    """None while the receipt is not in a batch yet."""
    proof: list[bytes]
    committed: bool


class GatewayStore:
    """One SQLite connection shared by the gateway's threads (serialised by a lock)."""

    def __init__(self, path: str | Path, provider: str):
        self.path = str(path)
        self.provider = checksum(provider)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._trees: OrderedDict[int, MerkleTree] = OrderedDict()
        self._trees_lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='provider'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('provider', ?), ('schema_version', ?)",
                           (self.provider, str(SCHEMA_VERSION)))
            elif row[0] != self.provider:
                raise StoreMismatch(self.path, row[0], self.provider)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions ---------------------------------------------------------------------------
    class _Tx:
        def __init__(self, store: "GatewayStore"):
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            try:
                self.store._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.store._lock.release()
                raise
            return self.store._db

        def __exit__(self, exc_type, exc, tb) -> None:
            try:
                self.store._db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.store._lock.release()

    def _tx(self) -> "GatewayStore._Tx":
        return GatewayStore._Tx(self)

    # -- the ledger -----------------------------------------------------------------------------
    def channels(self) -> list[ChannelRecord]:
        with self._tx() as db:
            rows = db.execute("SELECT payer, model_id, charged, redeemed FROM channels").fetchall()
        return [ChannelRecord(p, m, int(c), int(r)) for p, m, c, r in rows]

    def record_request(self, payer: str, model_id: int, charged_total: int, signed: SignedReceipt,
                       voucher: Voucher | None = None, signature: bytes | None = None,
                       receipt_json: dict | None = None) -> None:
        """One served request: the channel's new charged total, its voucher (if paid by one), its receipt
        (``receipt_json``: its wire form, when the caller made it already)."""
        now = time.time()
        body = json.dumps(receipt_json or receipt_to_json(signed), separators=(",", ":"))
        with self._tx() as db:
            db.execute(
                "INSERT INTO channels VALUES (?, ?, ?, ?, ?) ON CONFLICT (payer, model_id) "
                "DO UPDATE SET charged = max(charged, excluded.charged), updated = excluded.updated",
                (payer, model_id, _amount(charged_total), _amount(0), now),
            )
            if voucher is not None and signature is not None:
                self._insert_voucher(db, voucher, signature, now)
            db.execute("INSERT INTO receipts (request_hash, leaf, body) VALUES (?, ?, ?)",
                       (signed.receipt.request_hash, signed.receipt.leaf(), body))

    def record_voucher(self, voucher: Voucher, signature: bytes) -> None:
        """Keep a voucher that came without a request (a client settling its exact total)."""
        with self._tx() as db:
            self._insert_voucher(db, voucher, signature, time.time())

    @staticmethod
    def _insert_voucher(db: sqlite3.Connection, voucher: Voucher, signature: bytes, now: float) -> None:
        # NOTE: a voucher for an amount seen before is the same promise: the first copy is kept
        # (its expiry may differ; both pay the same once redeemed).
        db.execute("INSERT OR IGNORE INTO vouchers VALUES (?, ?, ?, ?, ?, ?)",
                   (checksum(voucher.payer), voucher.model_id, _amount(voucher.cumulative_amount),
                    voucher.expiry, signature, now))

    def redeemable(self, now: int, min_validity: int = 0, min_gain: int = 1) -> list[RedeemableVoucher]:
        """Per channel, the highest stored voucher with ``redeemed < cumulative <= charged`` that is still
        valid ``min_validity`` seconds after ``now`` and adds at least ``min_gain``.

        # NOTE: never a voucher above the charged total: a client signs headroom for the
        # request it is about to make, and redeeming that headroom would take money for
        # tokens that were never served. The client closes the last gap by sending a
        # voucher for exactly its running total (``POST /v1/nodeai/vouchers``).
        """
        with self._tx() as db:
            rows = db.execute(
                """
                SELECT v.payer, v.model_id, v.cumulative, v.expiry, v.signature, c.charged, c.redeemed
                FROM vouchers v JOIN channels c ON c.payer = v.payer AND c.model_id = v.model_id
                WHERE v.cumulative <= c.charged AND v.cumulative > c.redeemed AND v.expiry >= ?
                  AND v.cumulative = (
                    SELECT max(w.cumulative) FROM vouchers w
                    WHERE w.payer = v.payer AND w.model_id = v.model_id AND w.cumulative <= c.charged
                      AND w.expiry >= ?)
                ORDER BY v.payer, v.model_id
                """,
                (now + min_validity, now + min_validity),
            ).fetchall()
        found = [
            RedeemableVoucher(Voucher(payer, self.provider, model_id, int(cumulative), expiry), bytes(signature),
                              int(charged), int(redeemed))
            for payer, model_id, cumulative, expiry, signature, charged, redeemed in rows
        ]  # fmt: skip
        return [r for r in found if r.gain >= min_gain]

    def vouchers(self, payer: str, model_id: int) -> list[Voucher]:
        """The stored vouchers of one channel, lowest first (for inspection and tests)."""
        with self._tx() as db:
            rows = db.execute("SELECT cumulative, expiry FROM vouchers WHERE payer = ? AND model_id = ? "
                              "ORDER BY cumulative", (checksum(payer), model_id)).fetchall()
        return [Voucher(checksum(payer), self.provider, model_id, int(c), e) for c, e in rows]

    def mark_redeemed(self, redeemed: Iterable[tuple[str, int, int]]) -> None:
        """Record ``(payer, model_id, cumulative)`` as paid out by the escrow; drop the vouchers it supersedes."""
        now = time.time()
        with self._tx() as db:
            for payer, model_id, cumulative in redeemed:
                payer = checksum(payer)
                db.execute(
                    "INSERT INTO channels VALUES (?, ?, ?, ?, ?) ON CONFLICT (payer, model_id) "
                    "DO UPDATE SET redeemed = max(redeemed, excluded.redeemed), updated = excluded.updated",
                    (payer, model_id, _amount(0), _amount(cumulative), now),
                )
                db.execute("DELETE FROM vouchers WHERE payer = ? AND model_id = ? AND cumulative <= ?",
                           (payer, model_id, _amount(cumulative)))

    # -- the receipt outbox ---------------------------------------------------------------------
    def pending_receipts(self) -> int:
        with self._tx() as db:
            return db.execute("SELECT count(*) FROM receipts WHERE batch_id IS NULL").fetchone()[0]

    def prepare_batch(self, max_count: int) -> ReceiptBatch | None:
        """Put up to ``max_count`` unbatched receipts (oldest first) into a new ``prepared`` batch."""
        if not 1 <= max_count:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        with self._tx() as db:
            rows = db.execute("SELECT id, body, leaf FROM receipts WHERE batch_id IS NULL ORDER BY id LIMIT ?",
                              (max_count,)).fetchall()
            if not rows:
                return None
            tree = MerkleTree([bytes(leaf) for _, _, leaf in rows])
            cursor = db.execute("INSERT INTO batches (root, count, status, created) VALUES (?, ?, 'prepared', ?)",
                                (tree.root, len(rows), time.time()))
            batch_id = cursor.lastrowid
            assert batch_id is not None
            db.executemany("UPDATE receipts SET batch_id = ?, batch_index = ? WHERE id = ?",
                           [(batch_id, index, row_id) for index, (row_id, _, _) in enumerate(rows)])
        self._remember_tree(batch_id, tree)
        return ReceiptBatch(batch_id, tree.root, [receipt_from_json(json.loads(body)) for _, body, _ in rows],
                            "prepared")

    def batches(self, status: str | None = None) -> list[ReceiptBatch]:
        with self._tx() as db:
            query = "SELECT id, root, status, tx_hash FROM batches"
            rows = db.execute(query + (" WHERE status = ?" if status else "") + " ORDER BY id",
                              (status,) if status else ()).fetchall()
            out = []
            for batch_id, root, batch_status, tx_hash in rows:
                bodies = db.execute("SELECT body FROM receipts WHERE batch_id = ? ORDER BY batch_index",
                                    (batch_id,)).fetchall()
                out.append(ReceiptBatch(batch_id, bytes(root), [receipt_from_json(json.loads(b)) for (b,) in bodies],
                                        batch_status, tx_hash))
        return out

    def mark_batch_committed(self, batch_id: int, tx_hash: str | None) -> None:
        with self._tx() as db:
            db.execute("UPDATE batches SET status = 'committed', tx_hash = ? WHERE id = ?", (tx_hash, batch_id))

    def receipt_proof(self, request_hash: bytes) -> ReceiptProof | None:
        """The receipt of a request and, once batched, its Merkle proof."""
        with self._tx() as db:
            row = db.execute(
                "SELECT r.body, r.batch_id, r.batch_index, b.root, b.status FROM receipts r "
                "LEFT JOIN batches b ON b.id = r.batch_id WHERE r.request_hash = ?", (request_hash,)
            ).fetchone()  # fmt: skip
            if row is None:
                return None
            body, batch_id, index, root, status = row
            signed = receipt_from_json(json.loads(body))
            if batch_id is None:
                return ReceiptProof(signed, None, [], False)
            with self._trees_lock:
                tree = self._trees.get(batch_id)
            if tree is None:
                leaves = db.execute("SELECT leaf FROM receipts WHERE batch_id = ? ORDER BY batch_index",
                                    (batch_id,)).fetchall()
                tree = MerkleTree([bytes(leaf) for (leaf,) in leaves])
        self._remember_tree(batch_id, tree)
        return ReceiptProof(signed, bytes(root), tree.proof(index), status == "committed")

    def _remember_tree(self, batch_id: int, tree: MerkleTree) -> None:
        with self._trees_lock:
            self._trees[batch_id] = tree
            self._trees.move_to_end(batch_id)
            while len(self._trees) > 16:
                self._trees.popitem(last=False)

    def iter_receipts(self) -> Iterator[SignedReceipt]:
        with self._tx() as db:
            bodies = db.execute("SELECT body FROM receipts ORDER BY id").fetchall()
        for (body,) in bodies:
            yield receipt_from_json(json.loads(body))
