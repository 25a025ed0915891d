"""The voucher auth flows of nodeai.serving.client, without a gateway.

Every flow (sync and async, on ``httpx2`` as the openai client uses it and on
plain ``httpx``) runs against a mock transport: the voucher each request
carries, the 402 ``voucher_too_low`` retry, totals picked up from headers and
from a stream's last chunk, and the in-flight count released when a request
ends, a stream closes or the transport fails.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import httpx
import httpx2
import pytest

from nodeai.serving.client import (CHARGED_TOTAL_HEADER, HttpxVoucherAuth, SpendLimitReached, VoucherAuth,
                                   VoucherWallet)
from nodeai.serving.payments import VOUCHER_HEADER, decode_voucher_header

PAYER_KEY = "0x" + "22" * 32
PROVIDER = "0x" + "33" * 20
ESCROW = "0x" + "44" * 20
MODEL, MODEL_ID, HEADROOM = "m", 7, 5


def wallet() -> VoucherWallet:
    return VoucherWallet(PAYER_KEY, PROVIDER, 31337, ESCROW, {MODEL: MODEL_ID}, headroom=HEADROOM,
                         clock=lambda: 1_000_000)


def cumulative(request: Any) -> int | None:
    header = request.headers.get(VOUCHER_HEADER)
    return None if header is None else decode_voucher_header(header).voucher.cumulative_amount


class Server:
    """A mock gateway: answers with ``replies`` in turn and records the voucher of every request."""

    def __init__(self, *replies: Callable[[Any, Any], Any]):
        self.replies = list(replies)
        self.vouchers: list[int | None] = []

    def __call__(self, lib: Any) -> Callable[[Any], Any]:
        def handle(request: Any) -> Any:
            self.vouchers.append(cumulative(request))
            return self.replies.pop(0)(lib, request)
        return handle


def ok(total: int) -> Callable[[Any, Any], Any]:
    return lambda lib, request: lib.Response(200, headers={CHARGED_TOTAL_HEADER: str(total)}, json={"ok": True})


def too_low(charged: int, required: int) -> Callable[[Any, Any], Any]:
    error = {"error": {"code": "voucher_too_low",
                       "nodeai": {"charged_total": str(charged), "required_cumulative": str(required)}}}
    return lambda lib, request: lib.Response(402, json=error)


def stream(total: int) -> Callable[[Any, Any], Any]:
    """An event stream sent in pieces (the total split across two of them), read as the client reads it."""
    body = (b'data: {"choices": []}\n\n'
            + b'data: {"usage": {"nodeai_charged_total": "' + str(total).encode() + b'"}}\n\ndata: [DONE]\n\n')
    pieces = [body[i:i + 20] for i in range(0, len(body), 20)]

    def reply(lib: Any, request: Any) -> Any:
        class Pieces(lib.SyncByteStream, lib.AsyncByteStream):
            def __iter__(self) -> Any:
                yield from pieces

            async def __aiter__(self) -> Any:
                for piece in pieces:
                    yield piece

        return lib.Response(200, headers={"content-type": "text/event-stream"}, stream=Pieces())
    return reply


def fail(lib: Any, request: Any) -> Any:
    raise lib.ConnectError("gateway down", request=request)


def broken_402(lib: Any, request: Any) -> Any:
    """A 402 whose body breaks off while the auth reads it."""
    class Broken(lib.SyncByteStream, lib.AsyncByteStream):
        def __iter__(self) -> Any:
            raise lib.ReadError("connection reset", request=request)
            yield b""

        async def __aiter__(self) -> Any:
            raise lib.ReadError("connection reset", request=request)
            yield b""

    return lib.Response(402, stream=Broken())


LIBS = [pytest.param(httpx2, VoucherAuth, id="httpx2"), pytest.param(httpx, HttpxVoucherAuth, id="httpx")]
BODY = {"model": MODEL, "prompt": "Hi"}


def run(lib: Any, auth_type: type, mode: str, server: Server, w: VoucherWallet, *,
        body: Any = BODY, streamed: bool = False, check: Callable[[], None] = lambda: None) -> Any:
    """One POST through the auth, sync or async; ``check`` runs while a streamed response is open."""
    if mode == "sync":
        with lib.Client(transport=lib.MockTransport(server(lib)), auth=auth_type(w)) as client:
            if not streamed:
                return client.post("http://gw/v1/completions", json=body)
            with client.stream("POST", "http://gw/v1/completions", json=body) as response:
                check()
                return b"".join(response.iter_bytes())

    async def go() -> Any:
        async with lib.AsyncClient(transport=lib.MockTransport(server(lib)), auth=auth_type(w)) as client:
            if not streamed:
                return await client.post("http://gw/v1/completions", json=body)
            async with client.stream("POST", "http://gw/v1/completions", json=body) as response:
                check()
                return b"".join([chunk async for chunk in response.aiter_bytes()])
    return asyncio.run(go())


MODES = ["sync", "async"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lib, auth_type", LIBS)
def test_a_request_pays_total_plus_headroom_and_learns_the_new_total(lib: Any, auth_type: type, mode: str) -> None:
    w, server = wallet(), Server(ok(3), ok(8))
    assert run(lib, auth_type, mode, server, w).status_code == 200
    assert run(lib, auth_type, mode, server, w).status_code == 200
    assert server.vouchers == [HEADROOM, 3 + HEADROOM]
    assert w.totals == {MODEL_ID: 8} and w._in_flight == {MODEL_ID: 0}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lib, auth_type", LIBS)
def test_a_request_for_no_known_model_carries_no_voucher(lib: Any, auth_type: type, mode: str) -> None:
    w, server = wallet(), Server(too_low(1, 2))
    assert run(lib, auth_type, mode, server, w, body={"model": "other"}).status_code == 402
    assert server.vouchers == [None] and w.totals == {} and w._in_flight == {}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lib, auth_type", LIBS)
def test_voucher_too_low_is_retried_once_with_the_amount_asked(lib: Any, auth_type: type, mode: str) -> None:
    w, server = wallet(), Server(too_low(40, 45), ok(44))
    assert run(lib, auth_type, mode, server, w).status_code == 200
    assert server.vouchers == [HEADROOM, 45]
    assert w.totals == {MODEL_ID: 44} and w._in_flight == {MODEL_ID: 0}

    # a second refusal is the caller's to see
    w, server = wallet(), Server(too_low(40, 45), too_low(50, 55))
    response = run(lib, auth_type, mode, server, w)
    assert response.status_code == 402 and response.json()["error"]["nodeai"]["required_cumulative"] == "55"
    assert server.vouchers == [HEADROOM, 45] and w.totals == {MODEL_ID: 40} and w._in_flight == {MODEL_ID: 0}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lib, auth_type", LIBS)
def test_a_stream_stays_in_flight_until_closed_and_reports_its_total(lib: Any, auth_type: type, mode: str) -> None:
    w, server = wallet(), Server(stream(12))

    def open_stream_is_in_flight() -> None:
        assert w._in_flight == {MODEL_ID: 1}

    body = run(lib, auth_type, mode, server, w, streamed=True, check=open_stream_is_in_flight)
    assert body.endswith(b"data: [DONE]\n\n")
    assert w.totals == {MODEL_ID: 12} and w._in_flight == {MODEL_ID: 0}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lib, auth_type", LIBS)
def test_a_failed_request_is_no_longer_in_flight(lib: Any, auth_type: type, mode: str) -> None:
    w = wallet()
    with pytest.raises(lib.ConnectError):
        run(lib, auth_type, mode, Server(fail), w)
    assert w._in_flight == {MODEL_ID: 0}
    # and after a 402 whose retry fails
    with pytest.raises(lib.ConnectError):
        run(lib, auth_type, mode, Server(too_low(40, 45), fail), w)
    assert w._in_flight == {MODEL_ID: 0} and w.totals == {MODEL_ID: 40}
    # and after a 402 whose body could not be read
    with pytest.raises(lib.ReadError):
        run(lib, auth_type, mode, Server(broken_402), w)
    assert w._in_flight == {MODEL_ID: 0}


def test_default_headers_and_settle_sign_the_running_total() -> None:
    w = wallet()
    w.observe(MODEL_ID, 20)
    assert cumulative(httpx.Request("POST", "http://gw", headers=w.default_headers(MODEL))) == 20 + HEADROOM
    seen: list[int | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(cumulative(request))
        return httpx.Response(200, json={"charged_total": "20"})

    with httpx.Client(transport=httpx.MockTransport(handle)) as client:
        assert w.settle("http://gw/", MODEL, client) == {"charged_total": "20"}
    assert seen == [20] and w.totals == {MODEL_ID: 20}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lib, auth_type", LIBS)
def test_a_gateway_cannot_talk_the_wallet_into_paying_more(lib: Any, auth_type: type, mode: str) -> None:
    # asking for more than the headroom above its total: the 402 goes back to the caller, nothing signed
    w, server = wallet(), Server(too_low(40, 40 + HEADROOM + 1))
    assert run(lib, auth_type, mode, server, w).status_code == 402
    assert server.vouchers == [HEADROOM] and w._in_flight == {MODEL_ID: 0}

    # once the wallet knows its total, a reported total above what it ever signed is refused
    w = wallet()
    assert run(lib, auth_type, mode, Server(ok(3)), w).status_code == 200
    server = Server(too_low(1_000, 1_002))
    assert run(lib, auth_type, mode, server, w).status_code == 402
    assert server.vouchers == [3 + HEADROOM] and w.totals == {MODEL_ID: 3}
    assert run(lib, auth_type, mode, Server(ok(900)), w).status_code == 200  # an inflated total in a header
    assert w.totals == {MODEL_ID: 3}

    # totals kept from an earlier run count as known
    w = VoucherWallet(PAYER_KEY, PROVIDER, 31337, ESCROW, {MODEL: MODEL_ID}, headroom=HEADROOM,
                      clock=lambda: 1_000_000, totals={MODEL_ID: 20})
    server = Server(too_low(60, 62))
    assert run(lib, auth_type, mode, server, w).status_code == 402
    assert server.vouchers == [20 + HEADROOM] and w.totals == {MODEL_ID: 20}


def test_max_total_caps_what_the_wallet_signs() -> None:
    w = VoucherWallet(PAYER_KEY, PROVIDER, 31337, ESCROW, {MODEL: MODEL_ID}, headroom=HEADROOM,
                      clock=lambda: 1_000_000, max_total=12)
    assert cumulative(httpx.Request("POST", "http://gw", headers=w.default_headers(MODEL))) == HEADROOM
    w.observe(MODEL_ID, 8)
    with pytest.raises(SpendLimitReached, match="would pass this wallet's limit of 12 per channel"):
        w.default_headers(MODEL)
