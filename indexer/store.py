"""Storage of the indexer: SQLite (default, a file path) or PostgreSQL (a URL), one interface.

Tables (see ``MIGRATIONS``):

* ``events``   every decoded protocol event, keyed ``(chain_id, block_number, log_index)``
  and upserted, so a replay is harmless; each row names the entity it belongs to.
* ``entities`` the projections (models, agents, providers, jobs, channels, receipt
  batches) as JSON documents keyed ``(chain_id, kind, key)``; ``updated_block`` says
  whether a row is final (at or below the finalized height) or still pending.
* ``blocks``   recent block hashes, for the parent-hash check and the reorg walk-back.
* ``changes``  an append-only log of entity updates and reorgs: the live stream a
  client resumes from the last id it saw.
* ``cursors``  per chain: ``(height, hash)`` of the last block ingested and the
  head seen; written in the same transaction as the effects of that block.
* ``feed_deliveries`` which job each job-feed consumer has been given.

Everything that changes the view for a block range happens in one database
transaction (``commit_batch``, ``revert_above``), so a crash at any point
resumes with no gap and no duplicate.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from nodeai.errors import NodeAIError

ENTITY_KINDS = ("model", "provider", "job", "channel", "receipt_batch")
COPY_MIN_ROWS = 64  # PostgreSQL writes at least this many rows with COPY (see Store._insert_rows)


class StoreError(NodeAIError):
    """The indexer database refused an operation or a URL is malformed."""


@dataclass
class Entity:
    kind: str
    key: str
    doc: dict[str, Any]
    created_block: int
    updated_block: int

    def as_json(self, finalized_height: int) -> dict[str, Any]:
        status = "final" if self.updated_block <= finalized_height else "pending"
        return {"kind": self.kind, "key": self.key, "status": status, "created_block": self.created_block,
                "updated_block": self.updated_block, **self.doc}


@dataclass(frozen=True)
class EventRow:
    block_number: int
    log_index: int
    block_hash: str
    tx_hash: str
    contract: str
    name: str
    args: dict[str, Any]
    kind: str | None = None
    key: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"block_number": self.block_number, "log_index": self.log_index, "block_hash": self.block_hash,
                "tx_hash": self.tx_hash, "contract": self.contract, "event": self.name, "args": self.args}


@dataclass(frozen=True)
class Change:
    id: int
    block_number: int
    op: str  # "upsert" | "delete" | "reorg"
    kind: str | None
    key: str | None
    doc: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "block_number": self.block_number, "op": self.op, "kind": self.kind, "key": self.key,
                "doc": self.doc}


@dataclass(frozen=True)
class Cursor:
    height: int
    hash: str
    head: int


@dataclass
class Batch:
    """Everything one block range changes, committed in one transaction."""

    events: list[EventRow] = field(default_factory=list)
    entities: dict[tuple[str, str], Entity] = field(default_factory=dict)
    blocks: dict[int, tuple[str, str]] = field(default_factory=dict)  # number -> (hash, parent hash)
    cursor: Cursor | None = None


# NOTE: the column order EventRow's fields follow; every event read selects these.
EVENT_COLUMNS = "block_number, log_index, block_hash, tx_hash, contract, name, args, kind, entity_key"


def _event_rows(rows: Iterable[tuple]) -> list[EventRow]:
    return [EventRow(b, i, bh, tx, c, n, json.loads(a), k, ek) for b, i, bh, tx, c, n, a, k, ek in rows]


def sort_key(kind: str, key: str) -> str:
    # NOTE: numeric ids sort as numbers (job 10 after job 9) in both databases.
    return key.zfill(30) if key.isdigit() else key


MIGRATIONS: list[tuple[int, dict[str, list[str]]]] = [
    (1, {
        "common": [
            """CREATE TABLE events (
                chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL,
                block_hash TEXT NOT NULL, tx_hash TEXT NOT NULL, contract TEXT NOT NULL, name TEXT NOT NULL,
                args TEXT NOT NULL, kind TEXT, entity_key TEXT,
                PRIMARY KEY (chain_id, block_number, log_index))""",
            "CREATE INDEX events_entity ON events (chain_id, kind, entity_key, block_number, log_index)",
            """CREATE TABLE entities (
                chain_id BIGINT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, sort_key TEXT NOT NULL,
                doc TEXT NOT NULL, created_block BIGINT NOT NULL, updated_block BIGINT NOT NULL,
                PRIMARY KEY (chain_id, kind, key))""",
            "CREATE INDEX entities_order ON entities (chain_id, kind, sort_key)",
            """CREATE TABLE blocks (
                chain_id BIGINT NOT NULL, number BIGINT NOT NULL, hash TEXT NOT NULL, parent_hash TEXT NOT NULL,
                PRIMARY KEY (chain_id, number))""",
            """CREATE TABLE cursors (
                chain_id BIGINT PRIMARY KEY, height BIGINT NOT NULL, hash TEXT NOT NULL, head BIGINT NOT NULL)""",
            """CREATE TABLE feed_deliveries (
                consumer TEXT NOT NULL, chain_id BIGINT NOT NULL, job_key TEXT NOT NULL,
                PRIMARY KEY (consumer, chain_id, job_key))""",
        ],
        "sqlite": [
            """CREATE TABLE changes (
                id INTEGER PRIMARY KEY AUTOINCREMENT, chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL,
                op TEXT NOT NULL, kind TEXT, key TEXT, doc TEXT)""",
        ],
        "postgres": [
            """CREATE TABLE changes (
                id BIGSERIAL PRIMARY KEY, chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL,
                op TEXT NOT NULL, kind TEXT, key TEXT, doc TEXT)""",
        ],
    }),
]  # fmt: skip


class Store:
    """One connection to the indexer database. Not shared between threads: open one per thread."""

    dialect: str

    def __init__(self, connection, dialect: str, connect: Callable[[], Any] | None = None):
        self._conn = connection
        self.dialect = dialect
        self._lock = threading.Lock()
        self._connect = connect

    def reconnect(self) -> None:
        """Replace a broken connection (a PostgreSQL restart, a network blip) with a new one."""
        if self._connect is None:
            return
        with self._lock:
            try:
                self._conn.close()
            except Exception:  # NOTE: the old connection is already broken; closing it may fail too
                pass
            self._conn = self._connect()

    # -- plumbing ---------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgres" else sql

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                if self.dialect == "sqlite":
                    cur.execute("BEGIN IMMEDIATE")
                yield cur
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cur.close()

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute(self._sql(sql), tuple(params))
                rows = cur.fetchall()
                if self.dialect == "postgres":
                    self._conn.commit()  # NOTE: end the implicit read transaction so later reads see new data
                return rows
            finally:
                cur.close()

    def _json_field(self, name: str) -> str:
        # NOTE: compared as text in both databases; callers pass text values.
        if self.dialect == "postgres":
            return f"(doc::jsonb ->> '{name}')"
        return f"CAST(json_extract(doc, '$.{name}') AS TEXT)"

    def close(self) -> None:
        self._conn.close()

    # -- schema -----------------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply every migration not applied yet; returns the schema version."""
        with self.transaction() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
            cur.execute("SELECT version FROM schema_migrations")
            applied = {row[0] for row in cur.fetchall()}
            for version, statements in MIGRATIONS:
                if version in applied:
                    continue
                for sql in statements["common"] + statements[self.dialect]:
                    cur.execute(sql)
                cur.execute(self._sql("INSERT INTO schema_migrations (version) VALUES (?)"), (version,))
        return max(v for v, _ in MIGRATIONS)

    # -- ingestion --------------------------------------------------------------------------
    def cursor(self, chain_id: int) -> Cursor | None:
        rows = self._query("SELECT height, hash, head FROM cursors WHERE chain_id = ?", (chain_id,))
        return Cursor(*rows[0]) if rows else None

    def set_head(self, chain_id: int, head: int) -> None:
        with self.transaction() as cur:
            cur.execute(self._sql("UPDATE cursors SET head = ? WHERE chain_id = ?"), (head, chain_id))

    def load_entities(self, chain_id: int, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Entity]:
        found: dict[tuple[str, str], Entity] = {}
        by_kind: dict[str, list[str]] = {}
        for kind, key in set(keys):
            by_kind.setdefault(kind, []).append(key)
        # NOTE: one primary-key IN list per kind; a long OR of (kind, key) pairs costs SQLite
        # ~25 ms of planning per 400 keys, which dominated a backfill's reads.
        for kind, wanted in by_kind.items():
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                rows = self._query(
                    "SELECT kind, key, doc, created_block, updated_block FROM entities"
                    f" WHERE chain_id = ? AND kind = ? AND key IN ({', '.join('?' * len(chunk))})",
                    [chain_id, kind, *chunk],
                )
                for k, key, doc, created, updated in rows:
                    found[(k, key)] = Entity(k, key, json.loads(doc), created, updated)
        return found

    def commit_batch(self, chain_id: int, batch: Batch) -> None:
        """Events, projections, block hashes, change log and cursor of one range, atomically."""
        with self.transaction() as cur:
            if batch.events:
                self._insert_rows(
                    cur, "events", f"chain_id, {EVENT_COLUMNS}",
                    [(chain_id, e.block_number, e.log_index, e.block_hash, e.tx_hash, e.contract, e.name,
                      json.dumps(e.args), e.kind, e.key) for e in batch.events],
                    " ON CONFLICT (chain_id, block_number, log_index) DO NOTHING",
                )  # fmt: skip
            self._write_entities(cur, chain_id, batch.entities.values())
            if batch.blocks:
                cur.executemany(
                    self._sql(
                        "INSERT INTO blocks (chain_id, number, hash, parent_hash) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (chain_id, number) DO UPDATE SET hash = excluded.hash, parent_hash = excluded.parent_hash"
                    ),
                    [(chain_id, n, h, p) for n, (h, p) in batch.blocks.items()],
                )
            if batch.cursor:
                c = batch.cursor
                cur.execute(
                    self._sql(
                        "INSERT INTO cursors (chain_id, height, hash, head) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (chain_id) DO UPDATE SET height = excluded.height, hash = excluded.hash,"
                        " head = excluded.head"
                    ),
                    (chain_id, c.height, c.hash, c.head),
                )

    def _write_entities(self, cur, chain_id: int, entities: Iterable[Entity]) -> None:
        rows = [(chain_id, e.kind, e.key, sort_key(e.kind, e.key), json.dumps(e.doc), e.created_block, e.updated_block)
                for e in entities]  # fmt: skip
        if not rows:
            return
        self._insert_rows(
            cur, "entities", "chain_id, kind, key, sort_key, doc, created_block, updated_block", rows,
            " ON CONFLICT (chain_id, kind, key) DO UPDATE SET doc = excluded.doc, updated_block = excluded.updated_block",
        )  # fmt: skip
        self._insert_rows(cur, "changes", "chain_id, block_number, op, kind, key, doc",
                          [(chain_id, r[6], "upsert", r[1], r[2], r[4]) for r in rows])  # fmt: skip

    def _insert_rows(self, cur, table: str, columns: str, rows: list[tuple], on_conflict: str = "") -> None:
        """``INSERT INTO table (columns) VALUES (row) on_conflict`` for every row, in order.

        PostgreSQL gets COPY for more than a few rows (through a temporary table when there is
        a conflict clause): row by row, even pipelined, costs ~20 us a row there, most of a
        backfill's write time. The change log's ids follow the rows' order either way.
        """
        if self.dialect != "postgres" or len(rows) < COPY_MIN_ROWS:
            marks = ", ".join("?" * len(rows[0]))
            cur.executemany(self._sql(f"INSERT INTO {table} ({columns}) VALUES ({marks}){on_conflict}"), rows)
            return
        target = f"{table}_incoming" if on_conflict else table
        if on_conflict:
            cur.execute(f"CREATE TEMPORARY TABLE {target} (LIKE {table})")
        with cur.copy(f"COPY {target} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        if on_conflict:
            cur.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {target}{on_conflict}")
            cur.execute(f"DROP TABLE {target}")

    def prune_blocks(self, chain_id: int, below: int) -> None:
        with self.transaction() as cur:
            cur.execute(self._sql("DELETE FROM blocks WHERE chain_id = ? AND number < ?"), (chain_id, below))

    def block_hashes(self, chain_id: int, low: int, high: int) -> dict[int, str]:
        rows = self._query(
            "SELECT number, hash FROM blocks WHERE chain_id = ? AND number >= ? AND number <= ?", (chain_id, low, high)
        )
        return {n: h for n, h in rows}

    def lowest_block(self, chain_id: int) -> int | None:
        rows = self._query("SELECT MIN(number) FROM blocks WHERE chain_id = ?", (chain_id,))
        return rows[0][0] if rows and rows[0][0] is not None else None

    def revert_above(self, chain_id: int, fork_height: int, fork_hash: str, head: int, rebuild) -> list[tuple[str, str]]:
        """Undo every effect above ``fork_height`` in one transaction.

        Deletes events and block hashes above the fork, rebuilds each entity those
        events touched from the events that remain (``rebuild(kind, key, events)``
        returns the entity or None when none remain), logs a ``reorg`` change and
        moves the cursor to the fork point. Returns the rebuilt entity keys.
        """
        with self.transaction() as cur:
            cur.execute(
                self._sql("SELECT DISTINCT kind, entity_key FROM events WHERE chain_id = ? AND block_number > ? AND kind IS NOT NULL"),
                (chain_id, fork_height),
            )
            touched = [(k, key) for k, key in cur.fetchall()]
            cur.execute(self._sql("DELETE FROM events WHERE chain_id = ? AND block_number > ?"), (chain_id, fork_height))
            cur.execute(self._sql("DELETE FROM blocks WHERE chain_id = ? AND number > ?"), (chain_id, fork_height))
            cur.execute(
                self._sql("INSERT INTO changes (chain_id, block_number, op, kind, key, doc) VALUES (?, ?, 'reorg', NULL, NULL, NULL)"),
                (chain_id, fork_height),
            )
            rebuilt = []
            for kind, key in touched:
                cur.execute(
                    self._sql(
                        f"SELECT {EVENT_COLUMNS} FROM events"
                        " WHERE chain_id = ? AND kind = ? AND entity_key = ? ORDER BY block_number, log_index"
                    ),
                    (chain_id, kind, key),
                )
                events = _event_rows(cur.fetchall())
                entity = rebuild(kind, key, events)
                if entity is None:
                    cur.execute(self._sql("DELETE FROM entities WHERE chain_id = ? AND kind = ? AND key = ?"), (chain_id, kind, key))
                    cur.execute(
                        self._sql("INSERT INTO changes (chain_id, block_number, op, kind, key, doc) VALUES (?, ?, 'delete', ?, ?, NULL)"),
                        (chain_id, fork_height, kind, key),
                    )
                else:
                    self._write_entities(cur, chain_id, [entity])
                rebuilt.append((kind, key))
            cur.execute(
                self._sql("UPDATE cursors SET height = ?, hash = ?, head = ? WHERE chain_id = ?"),
                (fork_height, fork_hash, head, chain_id),
            )
        return rebuilt

    # -- reading (API, job feed) --------------------------------------------------------------
    def get_entity(self, chain_id: int, kind: str, key: str) -> Entity | None:
        return self.load_entities(chain_id, [(kind, key)]).get((kind, key))

    def list_entities(self, chain_id: int, kind: str, filters: dict[str, str] | None = None, limit: int = 50,
                      after: str | None = None) -> list[Entity]:
        """Entities of ``kind`` in key order after the sort key ``after``; ``filters`` compare
        top-level document fields as text (the caller validates field names)."""
        sql = "SELECT kind, key, doc, created_block, updated_block, sort_key FROM entities WHERE chain_id = ? AND kind = ?"
        params: list[Any] = [chain_id, kind]
        for name, value in (filters or {}).items():
            if not name.isidentifier():
                raise StoreError(f"filter field {name!r} is not an identifier")
            sql += f" AND {self._json_field(name)} = ?"
            params.append(value)
        if after is not None:
            sql += " AND sort_key > ?"
            params.append(after)
        sql += " ORDER BY sort_key LIMIT ?"
        params.append(limit)
        return [Entity(k, key, json.loads(doc), c, u) for k, key, doc, c, u, _ in self._query(sql, params)]

    def history(self, chain_id: int, kind: str, key: str) -> list[EventRow]:
        rows = self._query(
            f"SELECT {EVENT_COLUMNS} FROM events"
            " WHERE chain_id = ? AND kind = ? AND entity_key = ? ORDER BY block_number, log_index",
            (chain_id, kind, key),
        )
        return _event_rows(rows)

    def events(self, chain_id: int, name: str | None = None, limit: int = 100, after: tuple[int, int] | None = None) -> list[EventRow]:
        sql = (f"SELECT {EVENT_COLUMNS} FROM events"
               " WHERE chain_id = ?")  # fmt: skip
        params: list[Any] = [chain_id]
        if name:
            sql += " AND name = ?"
            params.append(name)
        if after:
            sql += " AND (block_number > ? OR (block_number = ? AND log_index > ?))"
            params += [after[0], after[0], after[1]]
        sql += " ORDER BY block_number, log_index LIMIT ?"
        params.append(limit)
        return _event_rows(self._query(sql, params))

    def count_events(self, chain_id: int) -> int:
        return self._query("SELECT COUNT(*) FROM events WHERE chain_id = ?", (chain_id,))[0][0]

    def changes_since(self, chain_id: int, after_id: int, limit: int = 500) -> list[Change]:
        rows = self._query(
            "SELECT id, block_number, op, kind, key, doc FROM changes WHERE chain_id = ? AND id > ? ORDER BY id LIMIT ?",
            (chain_id, after_id, limit),
        )
        return [Change(i, b, op, k, key, json.loads(doc) if doc else None) for i, b, op, k, key, doc in rows]

    def last_change_id(self, chain_id: int) -> int:
        rows = self._query("SELECT MAX(id) FROM changes WHERE chain_id = ?", (chain_id,))
        return rows[0][0] or 0

    # -- job feed ---------------------------------------------------------------------------------
    def delivered(self, consumer: str, chain_id: int, job_key: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM feed_deliveries WHERE consumer = ? AND chain_id = ? AND job_key = ?", (consumer, chain_id, job_key)
        )
        return bool(rows)

    def mark_delivered(self, consumer: str, chain_id: int, job_key: str) -> None:
        with self.transaction() as cur:
            cur.execute(
                self._sql("INSERT INTO feed_deliveries (consumer, chain_id, job_key) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"),
                (consumer, chain_id, job_key),
            )

    # -- comparison (tests: equality with a fresh re-index) -----------------------------------------
    def snapshot(self, chain_id: int) -> dict[str, Any]:
        """Events and projections as plain data, for comparing two databases."""
        events = self._query(
            "SELECT block_number, log_index, block_hash, name, args FROM events WHERE chain_id = ? ORDER BY block_number, log_index",
            (chain_id,),
        )
        entities = self._query(
            "SELECT kind, key, doc, created_block, updated_block FROM entities WHERE chain_id = ? ORDER BY kind, sort_key",
            (chain_id,),
        )
        return {
            "events": [(b, i, h, n, json.loads(a)) for b, i, h, n, a in events],
            "entities": [(k, key, json.loads(d), c, u) for k, key, d, c, u in entities],
        }


def open_store(url: str) -> Store:
    """``sqlite:///path/to.db`` (or a plain path) or ``postgresql://user@host:port/db``."""
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        def connect():
            try:
                return psycopg.connect(url, autocommit=False)
            except psycopg.OperationalError as exc:
                raise StoreError(f"cannot connect to PostgreSQL at {url}: {exc}".strip()) from None

        return Store(connect(), "postgres", connect)
    path = url.removeprefix("sqlite:///").removeprefix("sqlite://")
    if not path:
        raise StoreError("empty database path: pass a file path, sqlite:///path or postgresql://...")
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return _SqliteStore(conn)


class _SqliteStore(Store):
    """SQLite in autocommit mode with explicit BEGIN for writes (``Store.transaction``)."""

    def __init__(self, conn: sqlite3.Connection):
        super().__init__(conn, "sqlite")

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()
