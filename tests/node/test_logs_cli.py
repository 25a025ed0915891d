"""Structured logs, following them across rotation, and the CLI's init/status/logs commands."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodeai.node.cli import main
from nodeai.node.logs import configure_logging, follow_logs
from nodeai.node.state import StateStore

from .test_state import job


@pytest.fixture
def nodeai_logger():
    """Put the ``nodeai`` logger back as it was (configure_logging changes a process-wide logger)."""
    logger = logging.getLogger("nodeai")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_json_logs_carry_extra_fields(tmp_path: Path, nodeai_logger: logging.Logger) -> None:
    path = tmp_path / "node.log"
    configure_logging("INFO", True, path, stderr=False)
    logging.getLogger("nodeai.node").info("job %d: claimed", 7, extra={"job_id": 7, "tx": "0xabc"})
    logging.getLogger("nodeai.node").debug("hidden")
    for handler in logging.getLogger("nodeai").handlers:
        handler.flush()
    [line] = [json.loads(raw) for raw in path.read_text().splitlines()]
    assert line["msg"] == "job 7: claimed" and line["job_id"] == 7 and line["tx"] == "0xabc" and line["level"] == "info"


def test_follow_logs_tails_appends_and_survives_rotation(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    path.write_text("old 1\nold 2\nold 3\n")
    got: list[str] = []
    done = threading.Event()

    def reader() -> None:
        for line in follow_logs(path, lines=2, poll=0.02, stop=done.is_set):
            got.append(line)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        _wait(lambda: got == ["old 2", "old 3"])
        with path.open("a") as fh:
            fh.write("new 1\nhalf")
            fh.flush()
            _wait(lambda: got[-1] == "new 1")
            fh.write(" line\n")
        _wait(lambda: got[-1] == "half line")
        path.rename(tmp_path / "node.log.1")  # rotation: a new file takes the name
        path.write_text("after rotation\n")
        _wait(lambda: got[-1] == "after rotation")
    finally:
        done.set()
        thread.join(timeout=5)
    assert got == ["old 2", "old 3", "new 1", "half line", "after rotation"]


def _wait(predicate, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_cli_init_status_and_logs(tmp_path: Path) -> None:
    runner = CliRunner()
    config = tmp_path / "node.toml"
    result = runner.invoke(main, ["init", "--config", str(config)])
    assert result.exit_code == 0 and config.is_file()
    assert runner.invoke(main, ["init", "--config", str(config)]).exit_code == 2  # never overwrites silently

    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    missing = runner.invoke(main, ["status", "--config", str(config)])
    assert missing.exit_code == 2 and "has not run with this config" in missing.output

    state = StateStore(tmp_path / "state" / "node.db")
    state.add_seen(4, job(), "bafk", 1)
    state.set_meta("provider", "31337:0xprovider")
    state.close()
    status = runner.invoke(main, ["status", "--config", str(config), "--json"])
    assert status.exit_code == 0, status.output
    body = json.loads(status.output)
    assert body["jobs"] == {"seen": 1} and body["recent"][0]["job_id"] == 4 and body["health"] is None

    (tmp_path / "state" / "node.log").write_text("one\ntwo\nthree\n")
    logs = runner.invoke(main, ["logs", "--config", str(config), "-n", "2"])
    assert logs.exit_code == 0 and logs.output == "two\nthree\n"
    absent = runner.invoke(main, ["logs", "--file", str(tmp_path / "none.log")])
    assert absent.exit_code == 2 and "no log file" in absent.output
