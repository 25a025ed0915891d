"""The daemon's local state: one SQLite database (WAL) in the state folder.

Per job it keeps where the daemon is in the job's local lifecycle::

    SEEN -> CLAIMING(tx) -> CLAIMED -> EXECUTING -> RESULT_STORED(output CID) -> SUBMITTING(tx)
         -> SUBMITTED -> FINALIZING(tx) -> FINALIZED
    ... or a terminal REFUNDED, LOST (another provider, expired before a claim),
        FAILED(reason), SKIPPED(reason: the claim policy said no)

Every side effect is preceded by a committed write: the hash of a signed
transaction is stored before the transaction is broadcast (``record_tx``), the
output CID before the result is submitted. After a crash at any point the
record plus the chain's view of the job are enough for
:func:`nodeai.node.reconcile.next_action` to decide what to do next.

The ``txs`` table keeps every hash ever signed for a job's step (fee bumps
replace a transaction by another hash at the same nonce; any of them may be
the one that is mined).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

from nodeai.chain.jobs import JOB_FIELDS, Job, JobState

__all__ = ["Phase", "JobRecord", "StateStore", "job_to_json", "job_from_json"]


class Phase(str, Enum):
    SEEN = "seen"
    CLAIMING = "claiming"
    CLAIMED = "claimed"
    EXECUTING = "executing"
    RESULT_STORED = "result_stored"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    FINALIZING = "finalizing"
    FINALIZED = "finalized"
    REFUNDED = "refunded"
    LOST = "lost"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def is_terminal(self) -> bool:
        return self in (Phase.FINALIZED, Phase.REFUNDED, Phase.LOST, Phase.FAILED, Phase.SKIPPED)

    @property
    def step(self) -> str | None:
        """The transaction step this phase waits on, if any."""
        return {Phase.CLAIMING: "claim", Phase.SUBMITTING: "submit", Phase.FINALIZING: "finalize"}.get(self)


def job_to_json(job: Job) -> str:
    values = {name: getattr(job, name) for name in JOB_FIELDS}
    values["state"] = int(job.state)
    values["input_hash"] = "0x" + job.input_hash.hex()
    values["output_hash"] = "0x" + job.output_hash.hex()
    return json.dumps(values)


def job_from_json(text: str) -> Job:
    values = json.loads(text)
    values["state"] = JobState(values["state"])
    values["input_hash"] = bytes.fromhex(values["input_hash"][2:])
    values["output_hash"] = bytes.fromhex(values["output_hash"][2:])
    return Job(**values)


@dataclass(frozen=True)
class JobRecord:
    job_id: int
    phase: Phase
    job: Job
    input_cid: str
    created_block: int
    tx_hash: str | None = None  # latest hash of the phase's step
    output_cid: str | None = None
    output_hash: str | None = None
    usage: int | None = None
    charge: int | None = None
    reason: str | None = None
    attempts: int = 0
    not_before: float = 0.0  # SEEN jobs: unix time before which the claim is not tried (priority windows)
    seen_at: float = 0.0
    claim_sent_at: float | None = None
    updated_at: float = 0.0

    @property
    def has_result(self) -> bool:
        return self.output_cid is not None


_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id INTEGER PRIMARY KEY, phase TEXT NOT NULL, job TEXT NOT NULL, input_cid TEXT NOT NULL,
        created_block INTEGER NOT NULL, tx_hash TEXT, output_cid TEXT, output_hash TEXT, usage INTEGER,
        charge TEXT, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
        seen_at REAL NOT NULL, claim_sent_at REAL, updated_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS jobs_phase ON jobs (phase)",
    """CREATE TABLE IF NOT EXISTS txs (
        tx_hash TEXT PRIMARY KEY, job_id INTEGER, step TEXT NOT NULL, nonce INTEGER NOT NULL, created_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS txs_job ON txs (job_id, step)",
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
]

_COLUMNS = ("job_id, phase, job, input_cid, created_block, tx_hash, output_cid, output_hash, usage, charge, reason, "
            "attempts, not_before, seen_at, claim_sent_at, updated_at")


def _record(row: tuple) -> JobRecord:
    (job_id, phase, job, input_cid, created_block, tx_hash, output_cid, output_hash, usage, charge, reason,
     attempts, not_before, seen_at, claim_sent_at, updated_at) = row  # fmt: skip
    return JobRecord(job_id, Phase(phase), job_from_json(job), input_cid, created_block, tx_hash, output_cid,
                     output_hash, usage, int(charge) if charge is not None else None, reason, attempts, not_before,
                     seen_at, claim_sent_at, updated_at)  # fmt: skip


class StateStore:
    """The job records; thread-safe (one connection, one lock), every write committed before it returns."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NOTE: FULL, not NORMAL: a write must survive power loss too, since the transaction it
        # precedes is broadcast right after and the chain will remember it.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()
        with self._lock:
            for statement in _SCHEMA:
                self._conn.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, sql: str, params: tuple = ()) -> int:
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- jobs ----------------------------------------------------------------------------------------
    def add_seen(self, job_id: int, job: Job, input_cid: str, created_block: int, not_before: float = 0.0) -> bool:
        """Record a job the feed delivered; False when it is already known (a restart's redelivery)."""
        now = time.time()
        return self._write(
            f"INSERT OR IGNORE INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, 0, ?, ?, NULL, ?)",
            (job_id, Phase.SEEN.value, job_to_json(job), input_cid, created_block, not_before, now, now),
        ) == 1

    def get(self, job_id: int) -> JobRecord | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
        return _record(rows[0]) if rows else None

    def require(self, job_id: int) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise KeyError(f"job {job_id} is not in the local state")
        return record

    def update(self, job_id: int, **fields: Any) -> JobRecord:
        """Set ``fields`` (``phase``, ``job``, ``tx_hash``, ``output_cid``...) of a record in one commit."""
        allowed = {"phase", "job", "tx_hash", "output_cid", "output_hash", "usage", "charge", "reason", "attempts",
                   "not_before", "claim_sent_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown job record fields {sorted(unknown)}")
        values = dict(fields)
        if isinstance(values.get("phase"), Phase):
            values["phase"] = values["phase"].value
        if isinstance(values.get("job"), Job):
            values["job"] = job_to_json(values["job"])
        if values.get("charge") is not None:
            values["charge"] = str(values["charge"])  # NOTE: token amounts may exceed SQLite's 64-bit integers
        values["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in values)
        if self._write(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*values.values(), job_id)) != 1:
            raise KeyError(f"job {job_id} is not in the local state")
        return self.require(job_id)

    def record_tx(self, job_id: int | None, step: str, tx_hash: str, nonce: int, phase: Phase | None = None) -> None:
        """Remember a signed transaction before it is broadcast (and move the job to ``phase``)."""
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT OR IGNORE INTO txs (tx_hash, job_id, step, nonce, created_at) VALUES (?, ?, ?, ?, ?)",
                                   (tx_hash, job_id, step, nonce, now))
                if job_id is not None and phase is not None:
                    extra = ", claim_sent_at = COALESCE(claim_sent_at, ?)" if phase is Phase.CLAIMING else ""
                    params: tuple = (phase.value, tx_hash, now, *((now,) if extra else ()), job_id)
                    self._conn.execute(f"UPDATE jobs SET phase = ?, tx_hash = ?, updated_at = ?{extra} WHERE job_id = ?", params)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def tx_hashes(self, job_id: int, step: str) -> list[str]:
        """Every hash signed for ``step`` of a job, oldest first."""
        return [r[0] for r in self._read("SELECT tx_hash FROM txs WHERE job_id = ? AND step = ? ORDER BY created_at, rowid",
                                         (job_id, step))]

    def active(self) -> list[JobRecord]:
        """Every job not in a terminal phase, oldest first: what a restart resumes."""
        terminal = tuple(p.value for p in Phase if p.is_terminal)
        marks = ", ".join("?" * len(terminal))
        rows = self._read(f"SELECT {_COLUMNS} FROM jobs WHERE phase NOT IN ({marks}) ORDER BY job_id", terminal)
        return [_record(r) for r in rows]

    def all(self) -> Iterator[JobRecord]:
        for row in self._read(f"SELECT {_COLUMNS} FROM jobs ORDER BY job_id"):
            yield _record(row)

    def counts(self) -> dict[str, int]:
        """Jobs per phase (every phase, zeros included)."""
        counts = {p.value: 0 for p in Phase}
        for phase, n in self._read("SELECT phase, COUNT(*) FROM jobs GROUP BY phase"):
            counts[phase] = n
        return counts

    # -- small key/value facts (e.g. the provider address the state belongs to) ---------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value))
