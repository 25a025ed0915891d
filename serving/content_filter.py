"""The content-filter hook: what a deployment refuses to take in or send out.

A filter has two checks. ``check_input`` sees the prompt texts before any
work is done (a hit answers 400 with code ``content_filter``);
``find_in_output`` sees generated text, and a hit ends the output before the
offending text with OpenAI's ``finish_reason: "content_filter"``. For
streams, ``OutputGuard`` holds back the last few characters so that a blocked
term split over two chunks is never half sent.

Deployments choose a filter in the gateway config: ``blocklist`` (the default,
``BlocklistFilter`` over the configured terms), ``none``, or
``package.module:factory`` for their own (any object with these methods).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

__all__ = ["ContentFilter", "BlocklistFilter", "NoFilter", "OutputGuard", "DEFAULT_BLOCKLIST", "load_filter"]

# NOTE: a deliberately short default: requests for mass-casualty weapons and abuse material.
# Deployments extend or replace it (``blocklist`` in the gateway config).
DEFAULT_BLOCKLIST: tuple[str, ...] = (
    "build a pipe bomb",
    "make a pipe bomb",
    "synthesize sarin",
    "synthesise sarin",
    "make nerve agent",
    "weaponize anthrax",
    "child sexual abuse material",
)


@runtime_checkable
class ContentFilter(Protocol):
    hold_back: int
    """Characters a stream must hold back so a match split over chunks is caught (longest term)."""

    def check_input(self, texts: Sequence[str]) -> str | None:
        """A reason when the input must be refused, else None."""

    def find_in_output(self, text: str, final: bool) -> int | None:
        """Where blocked content starts in ``text`` (None: nothing blocked). ``final`` is False
        while more text may follow, so a match touching the end may still be tentative."""


class NoFilter:
    hold_back = 0

    def check_input(self, texts: Sequence[str]) -> str | None:
        return None

    def find_in_output(self, text: str, final: bool) -> int | None:
        return None


class BlocklistFilter:
    """Refuses whole-word, case-insensitive matches of any term (whitespace inside a term matches any run)."""

    def __init__(self, terms: Sequence[str] = DEFAULT_BLOCKLIST):
        cleaned = sorted({" ".join(t.split()).lower() for t in terms if t.strip()}, key=len, reverse=True)
        self.terms = tuple(cleaned)
        self.hold_back = max((len(t) for t in cleaned), default=0)
        if cleaned:
            alternatives = "|".join(r"\s+".join(map(re.escape, t.split())) for t in cleaned)
            self._pattern: re.Pattern[str] | None = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        else:
            self._pattern = None

    def check_input(self, texts: Sequence[str]) -> str | None:
        if self._pattern is None:
            return None
        for text in texts:
            match = self._pattern.search(text)
            if match:
                return f"blocked term {match.group(0).lower()!r}"
        return None

    def find_in_output(self, text: str, final: bool) -> int | None:
        if self._pattern is None:
            return None
        match = self._pattern.search(text)
        if match is None:
            return None
        # NOTE: a match ending exactly at the end of unfinished text is only tentative
        # ("bomb" may become "bombastic"); the stream guard holds it back instead.
        if not final and match.end() == len(text):
            return None
        return match.start()


@dataclass
class OutputGuard:
    """Streams generated text through a filter, holding back what a later chunk could still make blocked."""

    filter: ContentFilter
    text: str = ""
    sent: int = 0
    blocked: bool = field(default=False)

    def feed(self, delta: str) -> str:
        """Add ``delta``; return the text now safe to send (empty once blocked)."""
        if self.blocked:
            return ""
        self.text += delta
        cut = self.filter.find_in_output(self.text, final=False)
        if cut is not None:
            return self._block(cut)
        safe_to = max(self.sent, len(self.text) - self.filter.hold_back)
        out, self.sent = self.text[self.sent:safe_to], safe_to
        return out

    def finish(self) -> str:
        """The held-back rest, checked as final text."""
        if self.blocked:
            return ""
        cut = self.filter.find_in_output(self.text, final=True)
        if cut is not None:
            return self._block(cut)
        out, self.sent = self.text[self.sent:], len(self.text)
        return out

    def _block(self, cut: int) -> str:
        self.blocked = True
        out = self.text[self.sent:max(cut, self.sent)]
        self.sent = max(cut, self.sent)
        return out


def load_filter(spec: str, blocklist: Sequence[str] = DEFAULT_BLOCKLIST) -> ContentFilter:
    """The filter a config names: ``blocklist``, ``none`` or ``package.module:factory``."""
    if spec == "blocklist":
        return BlocklistFilter(blocklist)
    if spec == "none":
        return NoFilter()
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"content_filter {spec!r} is not 'blocklist', 'none' or 'package.module:factory'")
    factory = getattr(importlib.import_module(module_name), attribute)
    made = factory()
    if not isinstance(made, ContentFilter):
        raise TypeError(f"{spec} made {made!r}, which lacks hold_back, check_input or find_in_output")
    return made
