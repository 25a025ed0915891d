"""Helpers of the README demo (``scripts/demo.py``): output, processes, the daemon's thread, the balance check.

The demo itself reads top to bottom in ``scripts/demo.py``; what is here would
only clutter it:

* :class:`Timeline` prints ``[ 12.3s] message`` lines and times each section;
* :class:`FetchProgress` shows a large fetch (a bar on a terminal, milestones in a log);
* :class:`DaemonRunner` runs a :class:`nodeai.node.ProviderDaemon` on its own event loop in a thread;
* :class:`ServiceProcess` runs a helper process (the indexer) and stops it by PID;
* :func:`node_toml` writes the provider's config file;
* :func:`quiet_native_output` keeps what native libraries print off the demo's output;
* :func:`predict_balances` and :func:`check_balances`: what ``nodeai.chain.fees`` says every
  party must have gained or lost, compared with the chain to the last unit.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

from nodeai.chain.fees import Split, split_payment
from nodeai.errors import NodeAIError
from nodeai.native_output import quiet_native_output

__all__ = [
    "DemoFailed", "Timeline", "FetchProgress", "DaemonRunner", "ServiceProcess", "node_toml", "tusd", "short",
    "Party", "predict_balances", "check_balances", "wait_for", "quiet_native_output",
]  # fmt: skip

ONE = 10**6  # the test token has 6 decimals, like USDC


class DemoFailed(NodeAIError):
    """A check of the demo did not hold (a balance, a receipt, a job that did not settle)."""


def tusd(amount: int) -> str:
    """Token units as TUSD with every decimal (the balance check is exact to the unit)."""
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), ONE)
    return f"{sign}{whole:,}.{frac:06d} TUSD"


def short(value: str, keep: int = 10) -> str:
    """``0x1234abcd…`` / ``QmR58njn…``: enough to recognise, short enough for one line."""
    return value if len(value) <= keep + 2 else value[:keep] + "…"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something true; ``DemoFailed`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- output ---------------------------------------------------------------------------------------------
@dataclass
class Timeline:
    """``[ 12.3s] message`` lines, seconds since ``started``; each ``section`` is timed for the summary.

    Other threads (the daemon's job hooks) ``post`` their lines; the demo's
    thread prints them after its own line and while it waits, so a daemon that
    claims a job within milliseconds of its creation does not print the claim
    before the creation.
    """

    started: float = field(default_factory=time.monotonic)
    out: TextIO = sys.stdout
    sections: list[tuple[str, float, float | None]] = field(default_factory=list)
    _posts: "queue.Queue[tuple[float, str]]" = field(default_factory=queue.Queue)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        self._print(self.elapsed, message)
        self.flush()

    def _print(self, at: float, message: str) -> None:
        lines = message.splitlines() or [""]
        print(f"[{at:5.1f}s] {lines[0]}", file=self.out, flush=True)
        for line in lines[1:]:
            print(" " * 9 + line, file=self.out, flush=True)

    def post(self, message: str) -> None:
        """A line from another thread, printed by the demo's thread at its next ``say`` or ``wait``."""
        self._posts.put((self.elapsed, message))

    def flush(self) -> None:
        while True:
            try:
                at, message = self._posts.get_nowait()
            except queue.Empty:
                return
            self._print(at, message)

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
        """:func:`wait_for`, printing posted lines meanwhile."""

        def check() -> Any:
            self.flush()
            return predicate()

        value = wait_for(check, timeout, what, interval)
        self.flush()
        return value

    def note(self, message: str) -> None:
        """A line without a time stamp (details under the line before)."""
        print(" " * 9 + message, file=self.out, flush=True)

    def section(self, title: str) -> None:
        self._close()
        self.sections.append((title, self.elapsed, None))
        print(f"\n== {title}", file=self.out, flush=True)

    def _close(self) -> None:
        if self.sections and self.sections[-1][2] is None:
            title, start, _ = self.sections[-1]
            self.sections[-1] = (title, start, self.elapsed)

    def durations(self) -> list[tuple[str, float]]:
        """(title, seconds) of each section, after the start-up (imports) before the first."""
        self._close()
        startup = [("start-up", self.sections[0][1])] if self.sections else []
        return startup + [(title, (end or self.elapsed) - start) for title, start, end in self.sections]


class FetchProgress:
    """``progress(done, total)`` for ``ArtifactStore.fetch_file``: a bar on a terminal, quarters otherwise."""

    def __init__(self, timeline: Timeline, label: str):
        self.timeline, self.label = timeline, label
        self.tty = timeline.out.isatty()
        self.started = time.monotonic()
        self._shown = 0  # quarters printed (log mode) or the last bar width (terminal)

    def __call__(self, done: int, total: int) -> None:
        if total <= 0:
            return
        share = min(done / total, 1.0)
        rate = done / 1e6 / max(time.monotonic() - self.started, 1e-3)
        if self.tty:
            width = int(share * 30)
            if width != self._shown or done >= total:
                self._shown = width
                bar = "#" * width + "." * (30 - width)
                print(f"\r         {self.label} [{bar}] {share:4.0%} {done / 1e6:5.1f}/{total / 1e6:.1f} MB "
                      f"{rate:5.1f} MB/s", end="", file=self.timeline.out, flush=True)
        else:
            quarter = int(share * 4)
            # NOTE: a fetch over within half a second needs no progress lines
            if quarter > self._shown and quarter < 4 and time.monotonic() - self.started > 0.5:
                self._shown = quarter
                self.timeline.note(f"{self.label}: {share:4.0%} ({done / 1e6:.1f} of {total / 1e6:.1f} MB, {rate:.1f} MB/s)")

    def finish(self) -> None:
        if self.tty and self._shown:
            print(file=self.timeline.out, flush=True)


# -- the daemon in a thread -----------------------------------------------------------------------------
class DaemonRunner:
    """A ProviderDaemon on its own event loop in a thread, so the demo stays synchronous.

    ``start`` returns once the daemon is ready (registration reconciled, job
    loop running) and re-raises a start-up error; ``stop`` asks it to shut
    down, waits for it, and re-raises what ended it.
    """

    def __init__(self, daemon: Any):
        self.daemon = daemon
        self.loop = asyncio.new_event_loop()
        self.error: BaseException | None = None
        self._stop: asyncio.Event | None = None

        def main() -> None:
            asyncio.set_event_loop(self.loop)

            async def run() -> None:
                self._stop = asyncio.Event()
                await daemon.run(self._stop)

            try:
                self.loop.run_until_complete(run())
            except BaseException as exc:  # noqa: BLE001 - handed to the demo's thread by start()/stop()
                self.error = exc
            finally:
                self.loop.close()

        self._thread = threading.Thread(target=main, name="provider-daemon", daemon=True)

    def start(self, timeout: float = 120.0) -> "DaemonRunner":
        self._thread.start()
        wait_for(lambda: self.daemon.ready or self.error is not None or not self._thread.is_alive(), timeout,
                 "the provider daemon to start", interval=0.05)
        if self.error is not None:
            raise self.error
        return self

    @property
    def alive(self) -> bool:
        """The daemon's thread still runs (it ends only when stopped or when the daemon failed)."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 60.0) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise DemoFailed(f"the provider daemon did not stop within {timeout:.0f} s")
        error, self.error = self.error, None
        if error is not None and not isinstance(error, asyncio.CancelledError):
            raise error


# -- helper processes -----------------------------------------------------------------------------------
HELPER_PIDS_FILE = "helpers.pids"
"""In the demo's work folder: one ``NAME PID`` line per helper process, appended as each starts, so that
`nodeai dev down` can stop them even when the demo itself was killed before it could."""


def record_helper_pid(workdir: Path, name: str, pid: int) -> None:
    """Append ``NAME PID`` to the work folder's helper list (flushed to disk before the helper is used)."""
    with open(workdir / HELPER_PIDS_FILE, "a") as handle:
        handle.write(f"{name} {pid}\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_helper_pids(workdir: Path) -> list[tuple[str, int]]:
    """The ``(name, pid)`` lines of the helper list (none when it is missing; unreadable lines skipped)."""
    try:
        lines = (workdir / HELPER_PIDS_FILE).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        name, _, pid = line.strip().partition(" ")
        if pid.strip().isdigit():
            found.append((name, int(pid)))
    return found


class ServiceProcess:
    """A helper process (its own session, output to a log file), stopped by its PID."""

    def __init__(self, name: str, args: Sequence[str], log: Path, env: Mapping[str, str] | None = None):
        self.name, self.args, self.log = name, list(args), log
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> "ServiceProcess":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            # NOTE: a session of its own: a Ctrl-C in the demo's terminal reaches the demo, which
            # stops this process itself, in order, instead of every process dying at once.
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        return self

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.is_file() else ""
            raise DemoFailed(f"{self.name} exited with code {self.process.returncode}; the end of {self.log}:\n{tail}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (a clean shutdown), then SIGKILL after ``timeout``; returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            os.kill(process.pid, signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
        return process.returncode


# -- the provider's config ------------------------------------------------------------------------------
def node_toml(*, state_dir: Path, rpc_url: str, chain_id: int, deployments: Path, keystore: Path, password_file: Path,
              endpoint: str, peer_id: str, stake: int, offers: Sequence[tuple[int, int, str | None]],
              gateway_store: Path, ipfs_peers: Sequence[str], receipts_per_root: int) -> str:
    """The provider's node.toml (``nodeai node run --config``), tuned for a local chain.

    ``offers``: (model or agent id, price per 1k tokens, engine model name).
    """
    models = "\n".join(
        f"[[provider.models]]\nid = {model_id}\nprice_per_1k_tokens = {price}\n"
        + (f'engine_model = "{name}"\n' if name else "")
        for model_id, price, name in offers)
    return f"""# The demo provider's config: `nodeai node run --config {state_dir.parent / 'node.toml'}` runs it as a process.
# Written by scripts/demo.py; every option is explained by `nodeai node init --config example.toml`.
state_dir = "{state_dir}"

[chain]
rpc_url = "{rpc_url}"
chain_id = {chain_id}
deployments = "{deployments}"
poll_interval = 0.2

[keystore]
path = "{keystore}"
password_file = "{password_file}"

[provider]
endpoint = "{endpoint}"
peer_id = "{peer_id}"
stake = {stake}

{models}
[claim]
capacity = 4
min_time_to_deadline = 60

[batching]
gateway_store = "{gateway_store}"
# NOTE: a local demo settles at once: any redeemable voucher, a root once every request of the demo is in.
interval = 0.5
voucher_min_amount = 1
voucher_expiry_margin = 0
receipt_min_count = {receipts_per_root}

[tx]
poll_interval = 0.05
backoff = 0.2
max_backoff = 2

[feed]
# anvil mines a block per transaction and has no reorgs
confirmations = 0
poll_interval = 0.1

[ipfs]
backend = "embedded"
peers = {json.dumps(list(ipfs_peers))}

[http]
port = 0

[logging]
level = "INFO"
"""


# -- balances -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Party:
    role: str       # "requester", "provider", "model owner", "treasury"
    address: str
    before: int
    after: int
    expected_delta: int
    why: str

    @property
    def delta(self) -> int:
        return self.after - self.before

    @property
    def ok(self) -> bool:
        return self.delta == self.expected_delta


def predict_balances(*, inference_payments: Sequence[int], model_share_bps: int, job_charge: int, agent_share_bps: int,
                     protocol_fee_bps: int, deposit: int, stake: int,
                     agent_owner_is_requester: bool) -> tuple[dict[str, int], Split, Split]:
    """Each party's expected token balance change, from ``nodeai.chain.fees`` alone.

    The requester deposited ``deposit`` into the InferenceEscrow, which paid the
    provider ``inference_payments`` (one redeemed voucher each: every payment is
    split on its own, as the contract does); it paid ``job_charge`` for the
    agent job (the rest of its escrow was refunded). The provider staked
    ``stake`` and earned its share of every payment; the model owner and the
    treasury got theirs. Returns the deltas by role, and the inference (summed)
    and job splits.
    """
    splits = [split_payment(amount, model_share_bps, protocol_fee_bps) for amount in inference_payments]
    inference = Split(sum(s.provider for s in splits), sum(s.model_owner for s in splits),
                      sum(s.protocol_fee for s in splits))
    job = split_payment(job_charge, agent_share_bps, protocol_fee_bps)
    deltas = {
        "requester": -deposit - job_charge + (job.model_owner if agent_owner_is_requester else 0),
        "provider": -stake + inference.provider + job.provider,
        "model owner": inference.model_owner,
        "treasury": inference.protocol_fee + job.protocol_fee,
    }
    return deltas, inference, job


def check_balances(parties: Sequence[Party], timeline: Timeline) -> None:
    """Print the table; ``DemoFailed`` listing every party whose balance differs from the prediction."""
    timeline.note(f"{'party':<12} {'address':<13} {'before':>20} {'after':>20} {'change':>20}  {'fees.py predicts'}")
    for p in parties:
        mark = "ok" if p.ok else f"MISMATCH: expected {tusd(p.expected_delta)}"
        timeline.note(f"{p.role:<12} {short(p.address):<13} {tusd(p.before):>20} {tusd(p.after):>20} "
                      f"{tusd(p.delta):>20}  {mark}  ({p.why})")
    wrong = [p for p in parties if not p.ok]
    if wrong:
        raise DemoFailed("balances differ from what nodeai/chain/fees.py predicts: " + "; ".join(
            f"{p.role} changed by {tusd(p.delta)}, expected {tusd(p.expected_delta)}" for p in wrong))
