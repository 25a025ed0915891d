"""Fast log decoding straight from the ABIs with eth_abi.

web3's contract machinery (``get_logs``/``process_log``) decodes about 2,000
events/s here; decoding topics and data directly with eth_abi, one prepared
decoder per (address, topic0), is ~10x faster and is what the indexer uses.
Values come out JSON-ready: addresses checksummed, bytes as 0x-hex, ints as ints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode
from eth_utils import event_abi_to_log_topic, to_checksum_address

from nodeai.chain.deploy import Deployment

# NOTE: the payment token is not a protocol contract: its Transfer/Approval
# events are not indexed.
INDEXED_CONTRACTS = ("ModelRegistry", "ProviderRegistry", "JobMarket", "InferenceEscrow", "ReceiptRegistry")


class DecodeError(ValueError):
    """A log that matches a known event signature but does not decode: the RPC returned garbage."""


@dataclass(frozen=True)
class EventDecoder:
    contract: str
    name: str
    indexed: tuple[tuple[str, str], ...]  # (name, type) in topic order
    data_names: tuple[str, ...]
    data_types: tuple[str, ...]

    def decode(self, topics: list[str], data: str) -> dict[str, Any]:
        if len(topics) != len(self.indexed) + 1:
            raise DecodeError(f"{self.name}: expected {len(self.indexed) + 1} topics, got {len(topics)}")
        args: dict[str, Any] = {}
        for (name, typ), topic in zip(self.indexed, topics[1:]):
            args[name] = _jsonable(typ, decode([typ], bytes.fromhex(topic[2:]))[0])
        try:
            values = decode(list(self.data_types), bytes.fromhex(data[2:]))
        except Exception as exc:  # NOTE: eth_abi raises several unrelated types on bad input
            raise DecodeError(f"{self.name}: data does not decode: {exc}") from None
        for name, typ, value in zip(self.data_names, self.data_types, values):
            args[name] = _jsonable(typ, value)
        return args


def _jsonable(typ: str, value: Any) -> Any:
    if typ == "address":
        return to_checksum_address(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


class LogCodec:
    """Decoders for every event of the indexed contracts of a deployment."""

    def __init__(self, deployment: Deployment):
        self.addresses: list[str] = []
        self._decoders: dict[tuple[str, str], EventDecoder] = {}
        for contract in INDEXED_CONTRACTS:
            entry = deployment.contracts[contract]
            address = entry["address"].lower()
            self.addresses.append(entry["address"])
            for item in entry["abi"]:
                if item.get("type") != "event":
                    continue
                topic = "0x" + event_abi_to_log_topic(item).hex()
                inputs = item["inputs"]
                self._decoders[(address, topic)] = EventDecoder(
                    contract=contract,
                    name=item["name"],
                    indexed=tuple((i["name"], _abi_type(i)) for i in inputs if i.get("indexed")),
                    data_names=tuple(i["name"] for i in inputs if not i.get("indexed")),
                    data_types=tuple(_abi_type(i) for i in inputs if not i.get("indexed")),
                )

    def decoder(self, address: str, topic0: str) -> EventDecoder | None:
        return self._decoders.get((address.lower(), topic0.lower()))


def _abi_type(item: dict) -> str:
    if item["type"].startswith("tuple"):
        raise NotImplementedError("tuple event fields are not used by the protocol's contracts")
    return item["type"]
