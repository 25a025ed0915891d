"""Reorg walk-back as a pure function: where does our stored chain meet the canonical one?"""

from __future__ import annotations

from typing import Callable, Mapping


def find_fork_point(stored: Mapping[int, str], canonical_hash: Callable[[int], str | None], start: int) -> int | None:
    """The highest height <= ``start`` whose stored hash equals the canonical hash.

    Only heights we stored a hash for are compared (backfill keeps sparse
    hashes, the live tail every block). ``canonical_hash`` returns None for a
    height the chain does not have (it got shorter). Returns None when no
    stored height agrees: the fork is below everything we kept.
    """
    for height in sorted((h for h in stored if h <= start), reverse=True):
        if canonical_hash(height) == stored[height]:
            return height
    return None


def parent_links_ok(parent_hash: str, headers: list[Mapping[str, str]]) -> bool:
    """True when ``headers`` (consecutive, ascending) extend the block whose hash is ``parent_hash``."""
    expected = parent_hash
    for header in headers:
        if header["parentHash"] != expected:
            return False
        expected = header["hash"]
    return True
