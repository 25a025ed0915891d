"""Read-only SQL tool over the indexer's database (SQLite or PostgreSQL), for analytics copilots.

Read-only is enforced twice, so that neither layer alone has to be perfect:

1. **Parsing** (`check_select`, pure): one statement, starting with ``SELECT`` or
   ``WITH``; no write or session keyword anywhere outside string literals and
   quoted names; no functions that reach outside the query (``pg_*``, ``lo_*``,
   ``dblink``, ``set_config``, ``load_extension``, ...); no PostgreSQL escape or
   dollar-quoted strings (their quoting rules could hide a second statement).
2. **The database**: SQLite opens the file with ``mode=ro`` and
   ``PRAGMA query_only``; PostgreSQL runs the query as a prepared statement
   (a single command only) in a ``READ ONLY`` transaction that is rolled back.

Limits: at most ``max_rows`` rows come back (``truncated`` says more existed);
a query running longer than ``timeout_s`` is interrupted (SQLite progress
handler, PostgreSQL ``statement_timeout``).

# NOTE: for a shared PostgreSQL, also give the tool a role with SELECT rights
# only; the checks here keep a superuser URL safe for reads, not for secrets.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from nodeai.agents.errors import SqlRejected, ToolFailure
from nodeai.agents.spec import SqlToolConfig
from nodeai.agents.tools import Tool, ToolContext, function
from nodeai.agents.transcript import jsonable

MAX_QUERY_CHARS = 20_000
WRITE_KEYWORDS = frozenset("""
    insert update delete merge upsert drop alter create truncate grant revoke attach detach pragma vacuum
    analyze reindex copy call do execute prepare deallocate listen notify unlisten lock set reset begin commit
    rollback savepoint release into load checkpoint cluster refresh discard comment import returning
""".split())
# NOTE: functions that read files, change settings, signal backends or run other
# queries; identifiers followed by "(" are checked against these prefixes/names.
FORBIDDEN_FUNCTION_PREFIXES = ("pg_", "lo_", "dblink", "load_extension", "readfile", "writefile", "fts3_tokenizer")
FORBIDDEN_FUNCTIONS = frozenset({"set_config", "query_to_xml", "query_to_xml_and_xmlschema", "cursor_to_xml",
                                 "table_to_xml", "database_to_xml", "schema_to_xml", "nextval", "setval",
                                 "txid_current", "edit"})  # fmt: skip

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<line_comment>--[^\n]*)
      | (?P<block_comment>/\*.*?\*/)
      | (?P<string>'(?:[^']|'')*')
      | (?P<quoted>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
      | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
      | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
      | (?P<semicolon>;)
      | (?P<dollar>\$)
      | (?P<open>\()
      | (?P<other>[),.*+\-/%<>=!|&~^:?@#]+)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokenize(sql: str) -> list[tuple[str, str, int]]:
    """``(kind, text, end offset)`` tokens of ``sql`` (no spaces or comments); `SqlRejected` for
    anything this tokenizer does not know."""
    tokens, pos = [], 0
    while pos < len(sql):
        match = _TOKEN.match(sql, pos)
        if match is None:
            snippet = sql[pos : pos + 20]
            if sql[pos] in "'\"`[" or sql.startswith("/*", pos):
                raise SqlRejected(f"unterminated quote or comment at {snippet!r}")
            raise SqlRejected(f"unexpected character {sql[pos]!r} at {snippet!r}")
        kind = match.lastgroup or "other"
        if kind not in ("space", "line_comment", "block_comment"):
            tokens.append((kind, match.group(), match.end()))
        pos = match.end()
    return tokens


def check_select(sql: str) -> str:
    """The statement without a trailing ``;`` if it is a single read-only SELECT; `SqlRejected` otherwise."""
    if not isinstance(sql, str) or not sql.strip():
        raise SqlRejected("empty query")
    if len(sql) > MAX_QUERY_CHARS:
        raise SqlRejected(f"query longer than {MAX_QUERY_CHARS:,} characters")
    if "\x00" in sql:
        raise SqlRejected("NUL character in the query")
    spans = tokenize(sql)
    while spans and spans[-1][0] == "semicolon":
        spans.pop()
    if not spans:
        raise SqlRejected("empty query")
    end = spans[-1][2]
    tokens = [(kind, text) for kind, text, _ in spans]
    words = [(i, text.lower()) for i, (kind, text) in enumerate(tokens) if kind == "word"]
    first = next((text for _, text in words), None)
    if first not in ("select", "with") or any(kind != "open" for kind, _ in tokens[: words[0][0]]):
        raise SqlRejected(f"the query starts with {first!r}")
    for i, (kind, text) in enumerate(tokens):
        if kind == "semicolon":
            raise SqlRejected("more than one statement")
        if kind == "dollar":
            raise SqlRejected("'$' (dollar quoting or parameters) is not supported")
        if kind == "string" and i > 0 and tokens[i - 1][0] == "word" and tokens[i - 1][1].lower() == "e":
            raise SqlRejected("escape strings (E'...') are not supported: use standard '...' literals")
        if kind not in ("word", "quoted"):
            continue
        calls = i + 1 < len(tokens) and tokens[i + 1][0] == "open"
        if kind == "quoted":
            # NOTE: "pg_read_file"(...) names the same function as pg_read_file(...)
            name = text[1:-1].lower()
            if calls and (name.startswith(FORBIDDEN_FUNCTION_PREFIXES) or name in FORBIDDEN_FUNCTIONS):
                raise SqlRejected(f"function {name}() is not allowed")
            continue
        word = text.lower()
        if word == "replace":
            if not calls:  # NOTE: replace(x, 'a', 'b') is a string function; INSERT OR REPLACE is not
                raise SqlRejected("keyword 'REPLACE' is not allowed")
        elif word in WRITE_KEYWORDS:
            raise SqlRejected(f"keyword {word.upper()!r} is not allowed")
        if calls and (word.startswith(FORBIDDEN_FUNCTION_PREFIXES) or word in FORBIDDEN_FUNCTIONS):
            raise SqlRejected(f"function {word}() is not allowed")
        if word == "for" and i + 1 < len(tokens) and tokens[i + 1][1].lower() in ("update", "share", "no", "key"):
            raise SqlRejected("row locks (FOR UPDATE/SHARE) are not allowed")
    # NOTE: cut after the last token, so a trailing ";" or comment never reaches the database
    return sql[:end].strip()


def _sqlite_path(url: str) -> str | None:
    if url.startswith(("postgresql://", "postgres://")):
        return None
    return url.removeprefix("sqlite:///").removeprefix("sqlite://")


def run_readonly(url: str, sql: str, *, max_rows: int, timeout_s: float) -> dict[str, Any]:
    """Run ``sql`` in a read-only session of the database at ``url`` (no parsing here: see `check_select`)."""
    path = _sqlite_path(url)
    if path is not None:
        return _run_sqlite(path, sql, max_rows, timeout_s)
    return _run_postgres(url, sql, max_rows, timeout_s)


def _run_sqlite(path: str, sql: str, max_rows: int, timeout_s: float) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ToolFailure("sql.query", f"no SQLite database at {path}")
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s)
    try:
        conn.execute("PRAGMA query_only = ON")
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1_000)
        try:
            cur = conn.execute(sql)
            rows = cur.fetchmany(max_rows + 1)
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise ToolFailure("sql.query", f"query ran longer than {timeout_s:g} s and was stopped") from None
            raise ToolFailure("sql.query", f"SQLite refused the query: {exc}") from None
        except (sqlite3.DatabaseError, sqlite3.Warning) as exc:
            raise ToolFailure("sql.query", f"SQLite refused the query: {exc}") from None
        columns = [d[0] for d in cur.description or ()]
    finally:
        conn.close()
    return _result(columns, rows, max_rows)


def _run_postgres(url: str, sql: str, max_rows: int, timeout_s: float) -> dict[str, Any]:
    import psycopg

    try:
        conn = psycopg.connect(url, autocommit=False, connect_timeout=max(1, int(timeout_s)))
    except psycopg.OperationalError as exc:
        raise ToolFailure("sql.query", f"cannot connect to PostgreSQL: {exc}".strip(), retryable=True) from None
    try:
        conn.read_only = True
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('statement_timeout', %s, true)", (str(max(1, int(timeout_s * 1000))),))
            try:
                # NOTE: a prepared statement holds exactly one command, whatever the parser let through
                cur.execute(sql, None, prepare=True)
                rows = cur.fetchmany(max_rows + 1) if cur.description else []
            except psycopg.errors.QueryCanceled:
                raise ToolFailure("sql.query", f"query ran longer than {timeout_s:g} s and was stopped") from None
            except psycopg.Error as exc:
                raise ToolFailure("sql.query", f"PostgreSQL refused the query: {str(exc).strip()}") from None
            columns = [d.name for d in cur.description or ()]
    finally:
        conn.rollback()
        conn.close()
    return _result(columns, rows, max_rows)


def _result(columns: list[str], rows: list[tuple[Any, ...]], max_rows: int) -> dict[str, Any]:
    truncated = len(rows) > max_rows
    rows = rows[:max_rows]
    return {"columns": columns, "rows": [jsonable(list(r)) for r in rows], "row_count": len(rows), "truncated": truncated}


class SqlTool(Tool):
    """SELECT queries over the indexer's database (tables: events, entities, blocks, cursors, changes)."""

    name = "sql"

    def __init__(self, config: SqlToolConfig, database_url: str):
        self.config = config
        self._tool_name = config.name
        self.database_url = database_url

    @function("Run one read-only SELECT over the indexer database; returns columns and rows (row and time limited)")
    def query(self, ctx: ToolContext, sql: str) -> dict[str, Any]:
        statement = check_select(sql)
        return run_readonly(self.database_url, statement, max_rows=self.config.max_rows, timeout_s=self.config.timeout_s)
