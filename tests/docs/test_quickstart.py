"""docs/quickstart.md, run as a reader runs it: its ```sh blocks in order, in one bash session.

Nothing is mocked: ``nodeai dev up`` starts the real local marketplace (anvil,
the contracts, embedded IPFS nodes, SmolLM2 on llama.cpp, the gateway, the
provider daemon, the indexer), and every later block talks to it as a reader
would. The session's ``HOME`` is a temporary folder, so ``~/.nodeai`` and
``~/nodeai-local`` are the test's own. The blocks a reader cannot run here
are marked in the page with ``<!-- quickstart-test: skip (why) -->`` right
above their fence; the test insists that those are exactly the system
packages and ``make setup`` (this test runs inside the environment that builds).

Each block's output is checked for what a reader is told to expect: the
answer, a receipt that verifies on chain, the agent job settled, the wallet's
balance moved by exactly the deposit and the job's charge, everything stopped.
Whatever happens, the marketplace is stopped by its PID at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "quickstart.md"
SKIP = re.compile(r"^<!--\s*quickstart-test:\s*skip\s*\((?P<why>.+)\)\s*-->$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
MARK = "@@quickstart-block"
SESSION_TIMEOUT = 600  # s; about 2 minutes on an idle 2-core machine, 60 s of it the agent job's challenge window


@dataclass
class Block:
    number: int
    lang: str
    code: str
    line: int
    skip: str | None  # why it is not run, from the marker above its fence


def blocks(text: str) -> list[Block]:
    """The fenced blocks of the page, with the skip marker that precedes a fence (blank lines allowed between)."""
    found: list[Block] = []
    lines = text.splitlines()
    i, marker = 0, None
    while i < len(lines):
        line = lines[i].strip()
        skip = SKIP.match(line)
        fence = FENCE.match(line)
        if skip:
            marker = skip.group("why")
        elif fence:
            start = i
            i += 1
            body = []
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            found.append(Block(len(found), fence.group("lang"), "\n".join(body), start + 1, marker))
            marker = None
        elif line:
            marker = None  # NOTE: a marker belongs to the fence right below it, not to one further down
        i += 1
    return found


def runnable(all_blocks: list[Block]) -> list[Block]:
    return [b for b in all_blocks if b.lang == "sh" and b.skip is None]


def test_the_page_marks_only_the_install_steps_as_not_run() -> None:
    found = blocks(PAGE.read_text())
    skipped = [b for b in found if b.skip is not None]
    assert [b.code.split()[:2] for b in skipped] == [["sudo", "apt-get"], ["make", "setup"]], \
        "only the system packages and `make setup` may be skipped: every other command is run by this test"
    assert all(b.lang in ("sh", "text") for b in found), "blocks are ```sh (run) or ```text (sample output)"
    commands = "\n".join(b.code for b in runnable(found))
    for step in ("nodeai dev up", "nodeai login --create", "nodeai dev faucet", "nodeai escrow deposit", "nodeai infer",
                 "nodeai receipts verify", "openai.OpenAI", "nodeai agents create", "nodeai agents run",
                 "nodeai dev down"):
        assert step in commands, f"the quickstart no longer runs {step!r}"


def session_script(run: list[Block]) -> str:
    """One bash script: each block after a marker line (with a time stamp), stopping at the first failure."""
    parts = ["set -eo pipefail"]
    for block in run:
        parts.append(f"printf '\\n{MARK} %d %s@@\\n' {block.number} \"$(date +%s.%N)\"")
        parts.append(block.code)
    parts.append(f"printf '\\n{MARK} end %s@@\\n' \"$(date +%s.%N)\"")
    return "\n".join(parts) + "\n"


def split_output(output: str) -> tuple[dict[int, str], dict[int, float]]:
    """Output and seconds per block number, from the marker lines."""
    texts: dict[int, str] = {}
    seconds: dict[int, float] = {}
    pieces = re.split(rf"\n?{MARK} (\d+|end) ([\d.]+)@@\n", output)
    previous: tuple[int, float] | None = None
    for index in range(1, len(pieces), 3):
        name, stamp, text = pieces[index], float(pieces[index + 1]), pieces[index + 2]
        if previous is not None:
            seconds[previous[0]] = stamp - previous[1]
        if name != "end":
            texts[int(name)] = text
            previous = (int(name), stamp)
    return texts, seconds


def alive(pid: int) -> bool:
    """``pid`` runs and is not a zombie (a zombie has stopped; only its parent has not reaped it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def ours(pid: int) -> bool:
    """``pid`` is still one of the marketplace's processes (not another program that got the number since)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return alive(pid) and any(name in cmdline for name in (b"demo.py", b"anvil", b"nodeai.indexer"))


def marketplace_pids(workdir: Path) -> dict[str, int]:
    """The demo's PID and those of the processes it started (anvil, the indexer), from its files and its log."""
    pids: dict[str, int] = {}
    try:
        pids["marketplace"] = int((workdir / "marketplace.pid").read_text())
    except (OSError, ValueError):
        pass
    log = workdir / "marketplace.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    for name, pattern in (("anvil", r"anvil on \S+ \(pid (\d+)"), ("indexer", r"indexer starting in the background \(pid (\d+)"),
                          ("marketplace", r"\(or `kill (\d+)`")):
        match = re.search(pattern, text)
        if match:
            pids.setdefault(name, int(match.group(1)))
    return pids


def stop(pids: dict[str, int]) -> None:
    """SIGTERM to the marketplace (it stops its own processes in order), then SIGKILL to whatever still runs."""
    main = pids.get("marketplace")
    if main is not None and ours(main):
        os.kill(main, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ours(main):
            time.sleep(0.2)
    for pid in pids.values():
        if ours(pid):
            os.kill(pid, signal.SIGKILL)


def block_with(texts: dict[int, str], run: list[Block], command: str) -> str:
    """The output of the first block whose code contains ``command``."""
    for block in run:
        if command in block.code:
            return texts.get(block.number, "")
    raise AssertionError(f"no block runs {command!r}")


def tusd(pattern: str, text: str) -> Decimal:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return Decimal(match.group(1))


def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    run = runnable(blocks(PAGE.read_text()))
    home = tmp_path / "home"
    home.mkdir()
    workdir = home / "nodeai-local"
    script = tmp_path / "quickstart.sh"
    script.write_text(session_script(run))
    # NOTE: a reader's shell: no virtual environment active, no NODEAI_* settings, a HOME of its own.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NODEAI_", "VIRTUAL_ENV", "PYTHON")) and k not in ("HOME", "PWD")}
    env |= {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    started = time.monotonic()
    shell = subprocess.Popen(["bash", "--noprofile", "--norc", str(script)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    pids: dict[str, int] = {}
    try:
        try:
            output, _ = shell.communicate(timeout=SESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            output, _ = shell.communicate(timeout=30)
            raise AssertionError(f"the quickstart did not finish in {SESSION_TIMEOUT} s:\n{output[-6000:]}") from None
        finally:
            pids = marketplace_pids(workdir)
        texts, seconds = split_output(output)
        timing = ", ".join(f"#{n} {s:.0f} s" for n, s in seconds.items())
        failed = max(texts) if texts else None
        assert shell.returncode == 0, (
            f"block #{failed} (docs/quickstart.md line {next((b.line for b in run if b.number == failed), '?')}) failed "
            f"with exit code {shell.returncode}:\n{output[-6000:]}\n--- the marketplace's log:\n"
            f"{(workdir / 'marketplace.log').read_text(errors='replace')[-3000:] if (workdir / 'marketplace.log').is_file() else ''}")
        assert "Traceback" not in output, output[-6000:]
        total = time.monotonic() - started

        assert "nodeai, version" in block_with(texts, run, "nodeai --version")
        assert re.search(r"local marketplace is up \(pid \d+\)", block_with(texts, run, "nodeai dev up"))
        assert re.search(r"created wallet 0x[0-9a-fA-F]{40}", block_with(texts, run, "nodeai login --create"))
        # NOTE: env.sh sets NODEAI_HOME: the page's wallet (with its printed password) lives in the work folder
        assert (workdir / "home" / "keystore.json").is_file() and not (home / ".nodeai").exists()

        funded = block_with(texts, run, "nodeai dev faucet")
        assert "sent 100 TUSD and 1 ETH to" in funded and re.search(r"balance +100 TUSD", funded)
        assert "deposited 5 TUSD for" in block_with(texts, run, "nodeai escrow deposit")

        # the paid inference: the answer, what it cost, a receipt checked on the spot, then proven on chain
        answer = block_with(texts, run, "nodeai infer")
        assert "Paris" in answer, answer
        assert re.search(r"paid +0\.\d+ TUSD for \d+\+\d+ tokens at 0\.5 TUSD per 1k", answer), answer
        infer_paid = tusd(r"paid +([\d.]+) TUSD for", answer)
        assert re.search(rf"total +{re.escape(str(infer_paid))} TUSD charged by this provider for this model so far; "
                         r"5 TUSD was left in escrow for it before this request", answer), answer
        assert "at its on-chain price: verified" in answer, answer
        proven = block_with(texts, run, "nodeai receipts verify")
        assert re.search(r"valid: the receipt .* is in the batch 0x[0-9a-f]{64} committed on chain by 0x", proven), proven
        python = block_with(texts, run, "openai.OpenAI")
        assert re.search(r"\S.* \| [1-9]\d* TUSD units paid", python), python
        python_paid = Decimal(int(re.search(r"\| (\d+) TUSD units paid", python).group(1))).scaleb(-6)  # 6 decimals

        # the agent job: created, claimed, run on the model, settled through escrow
        created = block_with(texts, run, "nodeai agents create")
        assert re.search(r"agent geo-helper: id \d+ on model 1", created), created
        job = block_with(texts, run, "nodeai agents run")
        for state in ("OPEN", "CLAIMED by 0x", "SUBMITTED: output Qm", "SETTLED"):
            assert f" {state}" in job, f"{state} not seen:\n{job}"
        assert "result:" in job and "Tokyo" in job, job
        assert re.search(r"transcript: Qm\w{44}", job) and "refunded" in job, job
        charge = tusd(r"charged +([\d.]+) TUSD of 1 TUSD locked", job)
        assert Decimal(0) < charge <= Decimal(1)

        # where the money went: the wallet lost exactly the deposit and the job's charge
        money = block_with(texts, run, "nodeai escrow balance")
        assert tusd(r"in wallet ([\d.]+) TUSD", money) == Decimal(100) - Decimal(5) - charge, money
        # NOTE: both settlement vouchers (`nodeai infer`'s and the Python example's) redeemed, for exactly what was charged
        assert tusd(r"in escrow ([\d.]+) TUSD", money) == Decimal(5) - infer_paid - python_paid, money
        assert re.search(r"\bSETTLED\b", money), "jobs list --mine does not show the settled job"
        assert re.search(r"^http://127\.0\.0\.1:\d+/explorer/$", block_with(texts, run, "NODEAI_EXPLORER_URL").strip())

        # stopped: the marketplace and everything it started
        assert re.search(r"stopped the local marketplace \(pid \d+\)", block_with(texts, run, "nodeai dev down"))
        assert {"marketplace", "anvil", "indexer"} <= set(pids), pids
        assert not [name for name, pid in pids.items() if ours(pid)], f"still running after `nodeai dev down`: {pids}"
        print(f"quickstart ran in {total:.0f} s ({timing})")
    finally:
        stop(pids or marketplace_pids(workdir))
