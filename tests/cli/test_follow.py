"""Following a job shows every state it went through, also several landing between two polls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from nodeai.cli import chainview


@dataclass
class FakeView:
    events: list[Any] = field(default_factory=list)

    @property
    def state(self) -> str:
        return self.events[-1]


def test_transitions_between_two_polls_are_each_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    # what the chain holds at each poll: the provider claims and submits within one poll interval
    polls = [["JobCreated"], ["JobCreated"], ["JobCreated", "JobClaimed", "JobSubmitted"],
             ["JobCreated", "JobClaimed", "JobSubmitted", "JobSettled"]]

    def load(obj: Any, job_id: int) -> tuple[FakeView, list[str]]:
        events = polls.pop(0)
        return FakeView(list(events)), list(events)

    monkeypatch.setattr(chainview, "_load_job", load)
    monkeypatch.setattr(chainview, "fold", lambda job_id, events: FakeView(list(events)))
    seen: list[str] = []
    final = chainview.follow(None, 1, lambda v: v.state == "JobSettled", lambda v: seen.append(v.state),  # type: ignore[arg-type]
                             timeout=10, poll=0)
    assert seen == ["JobCreated", "JobClaimed", "JobSubmitted", "JobSettled"]
    assert final.state == "JobSettled" and polls == []
