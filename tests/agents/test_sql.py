"""The read-only SQL tool over a real indexer database, on SQLite and on PostgreSQL.

Both layers are checked on their own: the parser refuses anything but one
SELECT, and the database session refuses writes even when the parser is
bypassed (``run_readonly`` called directly).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeai.agents import AgentRuntime, load_spec
from nodeai.agents.errors import SqlRejected, ToolFailure
from nodeai.agents.spec import SqlToolConfig
from nodeai.agents.sql import WRITE_KEYWORDS, SqlTool, check_select, run_readonly
from nodeai.indexer.store import Batch, Cursor, Entity, open_store

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
CHAIN = 31337


@pytest.fixture(params=["sqlite", "postgres"])
def indexer_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An indexer database (migrated by the indexer itself) holding 3 jobs and 2 providers."""
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/indexer.db"
    else:
        schema = f"agents_sql_{secrets.token_hex(6)}"
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    store = open_store(url)
    store.migrate()
    batch = Batch(cursor=Cursor(10, "0xabc", 10))
    for i in range(3):
        batch.entities[("job", str(i))] = Entity("job", str(i), {"status": "open", "max_payment": str(i * 100)}, 1, 1)
    for addr in ("0xaa", "0xbb"):
        batch.entities[("provider", addr)] = Entity("provider", addr, {"stake": "1000"}, 2, 2)
    store.commit_batch(CHAIN, batch)
    store.close()
    yield url
    if schema:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def tool(url: str, max_rows: int = 100, timeout_s: float = 5.0) -> SqlTool:
    return SqlTool(SqlToolConfig(type="sql", max_rows=max_rows, timeout_s=timeout_s), url)


def test_select_over_the_indexer_tables(indexer_db: str) -> None:
    result = tool(indexer_db).query(None, "SELECT kind, count(*) AS n FROM entities GROUP BY kind ORDER BY kind;")  # type: ignore[arg-type]
    assert result == {"columns": ["kind", "n"], "rows": [["job", 3], ["provider", 2]], "row_count": 2, "truncated": False}
    limited = tool(indexer_db, max_rows=2).query(None, "SELECT key FROM entities WHERE kind = 'job' ORDER BY key")  # type: ignore[arg-type]
    assert limited["rows"] == [["0"], ["1"]] and limited["truncated"] is True
    cte = tool(indexer_db).query(None, "WITH j AS (SELECT key FROM entities WHERE kind = 'job') SELECT count(*) FROM j")  # type: ignore[arg-type]
    assert cte["rows"] == [[3]]


@pytest.mark.parametrize("sql", [
    "DELETE FROM entities",
    "SELECT 1; DELETE FROM entities",
    "WITH d AS (DELETE FROM entities RETURNING *) SELECT * FROM d",
    "SELECT * INTO copy FROM entities",
    "SELECT pg_sleep(10)",
    "SELECT \"pg_read_file\"('/etc/passwd')",
    "SELECT $$x$$",
    "SELECT E'\\'' ; DELETE FROM entities; --'",
    "SELECT * FROM entities FOR UPDATE",
    "PRAGMA writable_schema = 1",
    "ATTACH DATABASE '/tmp/x.db' AS x",
    "/* unterminated",
])  # fmt: skip
def test_parser_refuses_writes_and_escapes(indexer_db: str, sql: str) -> None:
    with pytest.raises(SqlRejected, match="only a single read-only SELECT"):
        tool(indexer_db).query(None, sql)  # type: ignore[arg-type]
    assert tool(indexer_db).query(None, "SELECT count(*) FROM entities")["rows"] == [[5]]  # type: ignore[arg-type]


@pytest.mark.parametrize("sql", [
    "DELETE FROM entities",
    "UPDATE entities SET doc = '{}'",
    "CREATE TABLE evil (a INTEGER)",
    "SELECT 1; DELETE FROM entities",
])  # fmt: skip
def test_database_session_refuses_writes_even_without_the_parser(indexer_db: str, sql: str) -> None:
    with pytest.raises(ToolFailure, match="refused the query"):
        run_readonly(indexer_db, sql, max_rows=10, timeout_s=5)
    assert run_readonly(indexer_db, "SELECT count(*) FROM entities", max_rows=10, timeout_s=5)["rows"] == [[5]]


def test_long_queries_are_stopped_at_the_time_limit(indexer_db: str) -> None:
    slow = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000) SELECT count(*) FROM n"
    )
    with pytest.raises(ToolFailure, match=r"query ran longer than 0.3 s and was stopped"):
        tool(indexer_db, timeout_s=0.3).query(None, slow)  # type: ignore[arg-type]


def test_analytics_agent_answers_from_the_indexer(indexer_db: str, tmp_path: Path) -> None:
    spec = load_spec({
        "spec_version": 1, "name": "analytics", "tools": [{"type": "sql", "max_rows": 10}],
        "planner": {"kind": "rules", "rules": [
            {"id": "q", "call": "sql.query", "args": {"sql": "SELECT count(*) FROM entities WHERE kind = 'job'"}, "save_as": "r"},
            {"id": "bad", "call": "sql.query", "args": {"sql": "DROP TABLE entities"}, "save_as": "w", "on_error": "continue"},
            {"id": "done", "finish": {"open_jobs": "${r.rows[0][0]}", "write": "${w.error}"}},
        ]},
    })  # fmt: skip
    result = AgentRuntime(tmp_path / "agents.db", sql_url=indexer_db).run(spec, "How many jobs are there?")
    assert result.status == "succeeded", result.reason
    assert result.output["open_jobs"] == 3
    assert "the query starts with 'drop'" in result.output["write"]


idents = st.builds(lambda head, tail: head + tail, st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
                   st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", max_size=8)).filter(
    lambda w: w not in WRITE_KEYWORDS and w != "replace")  # fmt: skip


@given(st.lists(idents, min_size=1, max_size=4), idents)
def test_plain_selects_pass_the_parser(columns: list[str], table: str) -> None:
    sql = f"SELECT {', '.join(columns)} FROM {table} WHERE {columns[0]} = 'a;b' -- trailing"
    assert check_select(sql) == sql.removesuffix(" -- trailing")


@given(st.sampled_from(sorted(WRITE_KEYWORDS)), st.text(alphabet="abc ();'\"", max_size=20))
def test_no_write_keyword_gets_through_outside_quotes(keyword: str, noise: str) -> None:
    sql = f"SELECT a FROM t WHERE b = 1 {keyword.upper()} {noise}"
    with pytest.raises(SqlRejected):
        check_select(sql)
