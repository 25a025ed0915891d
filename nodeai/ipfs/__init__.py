"""Content-addressed artifact storage on IPFS (model weights, job inputs and outputs).

Backends behind one interface, :class:`ArtifactStore`:

* :class:`EmbeddedKuboStore` (the default): a real kubo node inside this
  process, its own repo folder, peers joined explicitly by multiaddr;
* :class:`KuboRpcStore`: an IPFS daemon the operator runs, over its HTTP RPC
  API (``/api/v0``);
* :class:`CachedStore`: a size-limited LRU cache on local disk in front of
  either.

Whatever the backend, content is verified against its CID before anyone gets
it (:func:`verify_cid` rebuilds kubo's UnixFS DAG in pure Python), so a
provider never runs a model it did not ask for.
"""

from nodeai.ipfs.cache import CachedStore, CacheStats
from nodeai.ipfs.cid import compute_cid, compute_file_cid, parse_cid, verify_cid, verify_file_cid
from nodeai.ipfs.embedded import EmbeddedKuboStore
from nodeai.ipfs.errors import (ArtifactNotFoundError, CidMismatchError, InvalidCidError, IpfsError,
                                StoreClosedError)
from nodeai.ipfs.rpc import KuboRpcStore
from nodeai.ipfs.store import ArtifactStore, Progress

__all__ = [
    "ArtifactNotFoundError",
    "ArtifactStore",
    "CacheStats",
    "CachedStore",
    "CidMismatchError",
    "EmbeddedKuboStore",
    "InvalidCidError",
    "IpfsError",
    "KuboRpcStore",
    "Progress",
    "StoreClosedError",
    "compute_cid",
    "compute_file_cid",
    "parse_cid",
    "verify_cid",
    "verify_file_cid",
]
