"""Durable state of the agent runtime in one SQLite file: jobs, approvals, spend ledger, outbox.

Everything that must survive a restart of the process lives here:

* ``jobs``       each job's spec, input, deadline and last checkpoint (loop state and transcript),
                 so `AgentRuntime.resume` continues where the process stopped;
* ``approvals``  actions waiting for a human, decided through `ApprovalBook` (Python API, the
                 FastAPI router in ``api.py`` or the CLI), possibly from another process;
* ``spends``     what each agent spent per chain and token, for the sliding-window caps;
* ``outbox``     every signed transaction before it is broadcast, keyed by the action that made
                 it, so a restart re-broadcasts the same transaction instead of signing a second one;
* ``tool_calls`` start times of tool calls, for the per-tool rate limits.

Token amounts are stored as decimal text: ERC-20 amounts go up to 2**256.
Each operation opens its own short connection (WAL mode, busy timeout), so
the store can be shared by threads and processes; writes that must be atomic
with a check (a spend against its cap) run under ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nodeai.agents.errors import ApprovalClosed, ApprovalNotFound, JobNotFound

ApprovalStatus = Literal["pending", "approved", "denied", "expired"]
DEFAULT_APPROVAL_WINDOW_S = 86_400.0  # NOTE: how long an approval waits when its job has no deadline
RATE_LOG_KEEP_S = 86_400.0

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY, agent TEXT NOT NULL, spec TEXT NOT NULL, spec_cid TEXT, input TEXT NOT NULL,
        deadline REAL, price_per_1k TEXT NOT NULL, status TEXT NOT NULL, checkpoint TEXT, result TEXT,
        created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS approvals (
        id TEXT PRIMARY KEY, job_id TEXT NOT NULL, action_key TEXT NOT NULL UNIQUE, agent TEXT NOT NULL,
        summary TEXT NOT NULL, request TEXT NOT NULL, request_hash TEXT NOT NULL, status TEXT NOT NULL,
        created_at REAL NOT NULL, deadline REAL NOT NULL, decided_at REAL, decided_by TEXT, note TEXT)""",
    """CREATE TABLE IF NOT EXISTS spends (
        id INTEGER PRIMARY KEY AUTOINCREMENT, scope TEXT NOT NULL, chain_id INTEGER NOT NULL, token TEXT NOT NULL,
        amount TEXT NOT NULL, at REAL NOT NULL, action_key TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS spends_by_token ON spends (scope, chain_id, token, at)",
    """CREATE TABLE IF NOT EXISTS outbox (
        action_key TEXT PRIMARY KEY, chain_id INTEGER NOT NULL, sender TEXT NOT NULL, nonce INTEGER NOT NULL,
        raw_tx TEXT NOT NULL, tx_hash TEXT NOT NULL, status TEXT NOT NULL, receipt TEXT, created_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tool_calls (scope TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS tool_calls_by_key ON tool_calls (scope, key, at)",
]


@dataclass(frozen=True)
class Approval:
    id: str
    job_id: str
    action_key: str
    agent: str
    summary: str
    request: dict[str, Any]
    request_hash: str
    status: ApprovalStatus
    created_at: float
    deadline: float
    decided_at: float | None = None
    decided_by: str | None = None
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "job_id": self.job_id, "agent": self.agent, "summary": self.summary,
            "request": self.request, "status": self.status, "created_at": self.created_at, "deadline": self.deadline,
            "decided_at": self.decided_at, "decided_by": self.decided_by, "note": self.note,
        }  # fmt: skip


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    agent: str
    spec: str
    spec_cid: str | None
    input: Any
    deadline: float | None
    price_per_1k: int
    status: str
    checkpoint: dict[str, Any] | None
    result: dict[str, Any] | None


@dataclass(frozen=True)
class OutboxEntry:
    action_key: str
    chain_id: int
    sender: str
    nonce: int
    raw_tx: str
    tx_hash: str
    status: str  # "signed" | "mined" | "reverted"
    receipt: dict[str, Any] | None


class RuntimeStore:
    """The runtime's SQLite file. Safe to share between threads and processes."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            for sql in _SCHEMA:
                conn.execute(sql)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- jobs ---------------------------------------------------------------------------------
    def create_job(self, job_id: str, agent: str, spec_json: str, spec_cid: str | None, input_value: Any,
                   deadline: float | None, price_per_1k: int) -> bool:
        """Insert a job; False when a job with this id exists already (then it is resumed, not restarted)."""
        now = self.clock()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO jobs (job_id, agent, spec, spec_cid, input, deadline, price_per_1k, status, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?) ON CONFLICT (job_id) DO NOTHING",
                (job_id, agent, spec_json, spec_cid, json.dumps(input_value), deadline, str(price_per_1k), now, now),
            )
            return cur.rowcount == 1

    def checkpoint(self, job_id: str, status: str, checkpoint: dict[str, Any], result: dict[str, Any] | None = None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, checkpoint = ?, result = ?, updated_at = ? WHERE job_id = ?",
                (status, json.dumps(checkpoint), json.dumps(result) if result is not None else None, self.clock(), job_id),
            )

    def job(self, job_id: str) -> JobRecord:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT job_id, agent, spec, spec_cid, input, deadline, price_per_1k, status, checkpoint, result"
                " FROM jobs WHERE job_id = ?", (job_id,),
            ).fetchone()  # fmt: skip
        if row is None:
            raise JobNotFound(job_id)
        return JobRecord(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], int(row[6]), row[7],
                         json.loads(row[8]) if row[8] else None, json.loads(row[9]) if row[9] else None)  # fmt: skip

    def jobs(self, statuses: Sequence[str] = ("running", "waiting_approval")) -> list[str]:
        """Ids of the jobs in ``statuses`` (by default: the unfinished ones a restarted process resumes)."""
        marks = ", ".join("?" * len(statuses))
        with self._connect() as conn:
            rows = conn.execute(f"SELECT job_id FROM jobs WHERE status IN ({marks}) ORDER BY created_at", tuple(statuses))
            return [r[0] for r in rows.fetchall()]

    # -- approvals ----------------------------------------------------------------------------
    def request_approval(self, *, job_id: str, action_key: str, agent: str, summary: str, request: dict[str, Any],
                         request_hash: str, deadline: float | None) -> Approval:
        """The approval for ``action_key``, created pending when there is none yet (idempotent)."""
        now = self.clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO approvals (id, job_id, action_key, agent, summary, request, request_hash, status,"
                " created_at, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (action_key) DO NOTHING",
                ("ap_" + secrets.token_hex(8), job_id, action_key, agent, summary, json.dumps(request), request_hash, now,
                 deadline if deadline is not None else now + DEFAULT_APPROVAL_WINDOW_S),
            )  # fmt: skip
        found = self.approval_for_action(action_key)
        assert found is not None  # NOTE: inserted or already there, in the transaction above
        return found

    def approval_for_action(self, action_key: str) -> Approval | None:
        rows = self._approvals("WHERE action_key = ?", (action_key,))
        return rows[0] if rows else None

    def approval(self, approval_id: str) -> Approval:
        rows = self._approvals("WHERE id = ?", (approval_id,))
        if not rows:
            raise ApprovalNotFound(approval_id)
        return rows[0]

    def approvals(self, status: ApprovalStatus | None = None, job_id: str | None = None) -> list[Approval]:
        clauses, params = [], []
        if job_id is not None:
            clauses.append("job_id = ?")
            params.append(job_id)
        found = self._approvals(("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(params))
        return [a for a in found if status is None or a.status == status]

    def _approvals(self, where: str, params: tuple[Any, ...]) -> list[Approval]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, job_id, action_key, agent, summary, request, request_hash, status, created_at, deadline,"
                f" decided_at, decided_by, note FROM approvals {where} ORDER BY created_at", params,
            ).fetchall()  # fmt: skip
        now = self.clock()
        out = []
        for r in rows:
            status = r[7]
            if status == "pending" and now >= r[9]:
                status = "expired"  # NOTE: computed, so a deadline passes even while no process runs
            out.append(Approval(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], status, r[8], r[9], r[10], r[11], r[12]))
        return out

    def decide(self, approval_id: str, approve: bool, by: str, note: str = "") -> Approval:
        now = self.clock()
        with self._write() as conn:
            row = conn.execute("SELECT status, deadline FROM approvals WHERE id = ?", (approval_id,)).fetchone()
            if row is None:
                raise ApprovalNotFound(approval_id)
            status, deadline = row
            if status == "pending" and now >= deadline:
                status = "expired"
            if status != "pending":
                raise ApprovalClosed(approval_id, status)
            conn.execute(
                "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, note = ? WHERE id = ?",
                ("approved" if approve else "denied", now, by, note, approval_id),
            )
        return self.approval(approval_id)

    # -- spends -------------------------------------------------------------------------------
    def spent(self, scope: str, chain_id: int, token: str, period_s: float) -> int:
        now = self.clock()
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT amount FROM spends WHERE scope = ? AND chain_id = ? AND token = ? AND at > ? AND at <= ?",
                (scope, chain_id, token, now - period_s, now),
            ).fetchall()
        return sum(int(r[0]) for r in rows)

    @contextmanager
    def spend_transaction(self) -> Iterator["SpendTransaction"]:
        """An exclusive write transaction to check caps and record a spend atomically."""
        with self._write() as conn:
            yield SpendTransaction(conn, self.clock())

    def release_spends(self, action_key: str) -> None:
        """Forget the spends of an action whose transaction reverted: it moved nothing."""
        with self._write() as conn:
            conn.execute("DELETE FROM spends WHERE action_key = ?", (action_key,))

    # -- outbox -------------------------------------------------------------------------------
    def outbox(self, action_key: str) -> OutboxEntry | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT action_key, chain_id, sender, nonce, raw_tx, tx_hash, status, receipt FROM outbox"
                " WHERE action_key = ?", (action_key,),
            ).fetchone()  # fmt: skip
        if row is None:
            return None
        return OutboxEntry(*row[:7], json.loads(row[7]) if row[7] else None)

    def outbox_done(self, action_key: str, status: str, receipt: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("UPDATE outbox SET status = ?, receipt = ? WHERE action_key = ?",
                         (status, json.dumps(receipt), action_key))  # fmt: skip

    # -- rate limits --------------------------------------------------------------------------
    def recent_calls(self, scope: str, keys: Sequence[str], since: float) -> dict[str, list[float]]:
        marks = ", ".join("?" * len(keys))
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT key, at FROM tool_calls WHERE scope = ? AND key IN ({marks}) AND at > ?", (scope, *keys, since)
            ).fetchall()
        out: dict[str, list[float]] = {k: [] for k in keys}
        for key, at in rows:
            out[key].append(at)
        return out

    def record_call(self, scope: str, keys: Sequence[str], at: float) -> None:
        with self._write() as conn:
            conn.executemany("INSERT INTO tool_calls (scope, key, at) VALUES (?, ?, ?)", [(scope, k, at) for k in keys])
            conn.execute("DELETE FROM tool_calls WHERE at < ?", (at - RATE_LOG_KEEP_S,))


class SpendTransaction:
    """Reads and writes inside one ``BEGIN IMMEDIATE`` transaction (see `RuntimeStore.spend_transaction`)."""

    def __init__(self, conn: sqlite3.Connection, now: float):
        self._conn = conn
        self.now = now

    def spent(self, scope: str, chain_id: int, token: str, period_s: float) -> int:
        rows = self._conn.execute(
            "SELECT amount FROM spends WHERE scope = ? AND chain_id = ? AND token = ? AND at > ? AND at <= ?",
            (scope, chain_id, token, self.now - period_s, self.now),
        ).fetchall()
        return sum(int(r[0]) for r in rows)

    def record(self, scope: str, action_key: str, spends: Sequence[tuple[int, str, int]]) -> None:
        self._conn.executemany(
            "INSERT INTO spends (scope, chain_id, token, amount, at, action_key) VALUES (?, ?, ?, ?, ?, ?)",
            [(scope, chain, token, str(amount), self.now, action_key) for chain, token, amount in spends],
        )

    def add_outbox(self, action_key: str, chain_id: int, sender: str, nonce: int, raw_tx: str, tx_hash: str) -> None:
        self._conn.execute(
            "INSERT INTO outbox (action_key, chain_id, sender, nonce, raw_tx, tx_hash, status, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'signed', ?)", (action_key, chain_id, sender, nonce, raw_tx, tx_hash, self.now),
        )  # fmt: skip


class ApprovalBook:
    """The human side of approvals: list, approve, deny. Used by the API router and the CLI."""

    def __init__(self, store: RuntimeStore):
        self.store = store

    def list(self, status: ApprovalStatus | None = "pending", job_id: str | None = None) -> list[Approval]:
        return self.store.approvals(status, job_id)

    def get(self, approval_id: str) -> Approval:
        return self.store.approval(approval_id)

    def approve(self, approval_id: str, by: str = "operator", note: str = "") -> Approval:
        return self.store.decide(approval_id, True, by, note)

    def deny(self, approval_id: str, by: str = "operator", note: str = "") -> Approval:
        return self.store.decide(approval_id, False, by, note)
