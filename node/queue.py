"""Scale-out: claimed jobs go to worker processes through a NATS JetStream work queue.

Topology (``queue.mode = "nats"``)::

    daemon (one per provider key)                     workers (`nodeai node worker`, any number)
    feed -> policy -> claim -> publish(job) ------>   stream <stream> (work-queue retention)
                                                      durable pull consumer <consumer>, explicit ack
    submit <- record result <- request(control) <---  fetch input -> execute -> upload output
    reply "submitted" -------------------------------> ack the job message

* The daemon keeps the key and the nonce: every transaction is still sent by
  one process, so workers never race for nonces.
* A job message carries the ``Nats-Msg-Id`` header ``<chain id>-<job id>``, so a
  daemon that republishes a job after a restart (within the stream's duplicate
  window) adds no second copy.
* A worker acknowledges a job only after the daemon replied that its result is
  submitted on chain. A worker that dies stops sending "in progress"; after
  ``ack_wait`` JetStream redelivers the job to another worker.

In-process mode needs none of this: the daemon runs the executors itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator

from nodeai.node.config import QueueConfig
from nodeai.node.errors import QueueError
from nodeai.node.executors import JobContext

log = logging.getLogger("nodeai.node.queue")

__all__ = ["WorkItem", "Delivery", "JetStreamQueue", "msg_id"]

# NOTE: how long JetStream remembers a Nats-Msg-Id; a republish after a restart happens well within it.
DUPLICATE_WINDOW = 600.0


def msg_id(chain_id: int, job_id: int) -> str:
    return f"{chain_id}-{job_id}"


@dataclass(frozen=True)
class WorkItem:
    """One claimed job for a worker: what to run and where its input is."""

    chain_id: int
    context: JobContext
    input_cid: str

    def encode(self) -> bytes:
        return json.dumps({"chain_id": self.chain_id, "context": asdict(self.context), "input_cid": self.input_cid}).encode()

    @classmethod
    def decode(cls, data: bytes) -> "WorkItem":
        raw = json.loads(data)
        return cls(raw["chain_id"], JobContext(**raw["context"]), raw["input_cid"])


@dataclass
class Delivery:
    """A job handed to this worker; ``attempt`` counts deliveries (1 = first)."""

    item: WorkItem
    attempt: int
    _msg: Any

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self._msg.nak(delay=delay)

    async def in_progress(self) -> None:
        await self._msg.in_progress()

    async def term(self) -> None:
        await self._msg.term()


class JetStreamQueue:
    """The work-queue stream, its durable pull consumer and the control subject."""

    def __init__(self, config: QueueConfig):
        self.config = config
        self._nc: Any = None
        self._js: Any = None
        self._sub: Any = None

    async def connect(self) -> "JetStreamQueue":
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

        try:
            self._nc = await nats.connect(self.config.nats_url, connect_timeout=5, max_reconnect_attempts=-1,
                                          allow_reconnect=True)
        except Exception as exc:  # noqa: BLE001 - nats raises several unrelated types for "cannot connect"
            raise QueueError(f"cannot connect to NATS at {self.config.nats_url} ({exc}): "
                             "check queue.nats_url, or use queue.mode = \"in-process\"") from None
        self._js = self._nc.jetstream()
        try:
            await self._js.add_stream(StreamConfig(
                name=self.config.stream, subjects=[self.config.subject], retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW,
            ))  # fmt: skip
            await self._js.add_consumer(self.config.stream, ConsumerConfig(
                durable_name=self.config.consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.config.ack_wait,
                max_deliver=self.config.max_deliver, filter_subject=self.config.subject,
            ))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - JetStream API errors carry the server's description
            await self.close()
            raise QueueError(f"cannot set up the JetStream stream {self.config.stream!r} ({exc}): "
                             "is JetStream enabled on the server?") from None
        return self

    @property
    def nc(self) -> Any:
        if self._nc is None:
            raise QueueError("the queue is not connected")
        return self._nc

    async def close(self) -> None:
        if self._nc is not None:
            try:
                await self._nc.drain()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do then
                pass
            self._nc = self._js = self._sub = None

    # -- the daemon's side -------------------------------------------------------------------------------
    async def publish(self, item: WorkItem) -> bool:
        """Queue a job; False when JetStream already had it (deduplicated by job id)."""
        ack = await self._js.publish(self.config.subject, item.encode(),
                                     headers={"Nats-Msg-Id": msg_id(item.chain_id, item.context.job_id)})
        return not ack.duplicate

    async def serve_control(self, handler: Any) -> Any:
        """Answer the workers' requests on the control subject with ``await handler(request) -> reply``."""

        async def on_message(msg: Any) -> None:
            try:
                reply = await handler(json.loads(msg.data))
            except Exception as exc:  # noqa: BLE001 - the worker gets the error and retries later
                log.exception("control request failed")
                reply = {"ok": False, "error": str(exc)}
            if msg.reply:
                await msg.respond(json.dumps(reply).encode())

        # NOTE: a queue group, so a second daemon process by mistake does not answer twice.
        return await self.nc.subscribe(self.config.control, queue="daemon", cb=on_message)

    # -- the worker's side -------------------------------------------------------------------------------
    async def deliveries(self, fetch_timeout: float = 1.0) -> AsyncIterator[Delivery]:
        """Jobs for this worker, one at a time, until cancelled."""
        import nats.errors

        self._sub = await self._js.pull_subscribe_bind(durable=self.config.consumer, stream=self.config.stream)
        while True:
            try:
                messages = await self._sub.fetch(1, timeout=fetch_timeout)
            except nats.errors.TimeoutError:
                continue
            for msg in messages:
                try:
                    item = WorkItem.decode(msg.data)
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("dropping a malformed job message: %s", exc)
                    await msg.term()
                    continue
                yield Delivery(item, msg.metadata.num_delivered, msg)

    async def request(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Ask the daemon (control subject); ``QueueError`` when it does not answer in time."""
        import nats.errors

        try:
            reply = await self.nc.request(self.config.control, json.dumps(body).encode(), timeout=timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise QueueError(f"the daemon did not answer on {self.config.control} ({type(exc).__name__})") from None
        return json.loads(reply.data)


async def delete_stream(config: QueueConfig) -> None:
    """Remove the stream (and its consumer): for tests and `nodeai node` maintenance."""
    import nats

    nc = await nats.connect(config.nats_url, connect_timeout=5)
    try:
        await nc.jetstream().delete_stream(config.stream)
    finally:
        await nc.close()


async def heartbeat(delivery: Delivery, every: float) -> None:
    """Tell JetStream the job is still being worked on, until cancelled."""
    while True:
        await asyncio.sleep(every)
        try:
            await delivery.in_progress()
        except Exception as exc:  # noqa: BLE001 - a lost heartbeat only risks a redelivery
            log.warning("in-progress heartbeat failed: %s", exc)
