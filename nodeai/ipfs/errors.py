"""Errors of the artifact store (a subtree of :class:`nodeai.errors.NodeAIError`)::

    NodeAIError
    +-- IpfsError                   the IPFS node or daemon failed, or was misused
        +-- InvalidCidError         a string that is not a usable CID (also ValueError)
        +-- CidMismatchError        fetched bytes do not hash to the CID asked for (also ValueError)
        +-- ArtifactNotFoundError   no peer delivered the CID before the timeout (also LookupError)
        +-- StoreClosedError        the store was used after close()
"""

from __future__ import annotations

from nodeai.errors import NodeAIError


class IpfsError(NodeAIError):
    """Something about IPFS: the node, the daemon or the content."""


class InvalidCidError(IpfsError, ValueError):
    def __init__(self, cid: object, reason: str):
        self.cid = cid
        super().__init__(
            f"{cid!r} is not a usable CID: {reason}; pass the CID string the store returned when the artifact was "
            "added (CIDv0 'Qm...', or a CIDv1 of a dag-pb or raw block hashed with sha2-256)"
        )


class CidMismatchError(IpfsError, ValueError):
    """The content's CID is not the one asked for: the data is not returned or kept."""

    def __init__(self, expected: str, actual: str, *, source: str = "the fetched data"):
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"CID mismatch: expected {expected} but {source} hashes to {actual}; the data was discarded. "
            "The peer or the local blockstore served corrupted or wrong content: fetch again (from another "
            "peer), and check that the CID registered on chain is the one the publisher added"
        )


class ArtifactNotFoundError(IpfsError, LookupError):
    def __init__(self, cid: str, timeout: float, detail: str = ""):
        self.cid = cid
        self.timeout = timeout
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"artifact {cid} was not found within {timeout:g} s{extra}: no connected peer provides it. "
            "Connect to a node that holds it (the publisher's multiaddr), check that the publisher pinned it, "
            "or raise the timeout for large artifacts"
        )


class StoreClosedError(IpfsError, RuntimeError):
    def __init__(self, store: str):
        super().__init__(f"{store} is closed: open a new store (stores are context managers; use one per process)")
