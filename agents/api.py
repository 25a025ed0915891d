"""HTTP API for human approvals, as a FastAPI router the provider daemon mounts.

::

    from fastapi import FastAPI
    app = FastAPI()
    app.include_router(approvals_router(runtime.approvals), prefix="/agents", dependencies=[Depends(operator_auth)])

Routes (relative to the prefix):

* ``GET  /approvals?status=pending&job_id=...``  list approvals (``status=all`` for every one)
* ``GET  /approvals/{id}``                       one approval
* ``POST /approvals/{id}/approve``  ``{"by": "alice", "note": "ok"}``
* ``POST /approvals/{id}/deny``     ``{"by": "alice", "note": "too much"}``

Errors are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``):
404 for an unknown id, 409 for an approval already decided or expired. The
router has no auth of its own: mount it behind the daemon's operator auth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from fastapi import APIRouter, params
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from nodeai.agents.errors import ApprovalClosed, ApprovalNotFound
from nodeai.agents.store import Approval, ApprovalBook


class ApprovalOut(BaseModel):
    id: str
    job_id: str
    agent: str
    summary: str
    request: dict[str, Any]
    status: Literal["pending", "approved", "denied", "expired"]
    created_at: float
    deadline: float
    decided_at: float | None = None
    decided_by: str | None = None
    note: str | None = None

    @classmethod
    def of(cls, approval: Approval) -> "ApprovalOut":
        return cls(**approval.as_json())


class Decision(BaseModel):
    by: str = Field(default="operator", min_length=1, max_length=128, description="Who decides (recorded in the transcript).")
    note: str = Field(default="", max_length=2_000, description="Why (recorded in the transcript).")


def _error(status: int, message: str, kind: str, code: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": "id", "code": code}})


def approvals_router(book: ApprovalBook, dependencies: Sequence[params.Depends] | None = None) -> APIRouter:
    """Routes to list, approve and deny pending approvals of ``book`` (see the module docstring)."""
    router = APIRouter(tags=["agent approvals"], dependencies=list(dependencies or []))

    @router.get("/approvals", response_model=list[ApprovalOut])
    def list_approvals(status: Literal["pending", "approved", "denied", "expired", "all"] = "pending",
                       job_id: str | None = None) -> list[ApprovalOut]:  # fmt: skip
        found = book.list(None if status == "all" else status, job_id)
        return [ApprovalOut.of(a) for a in found]

    @router.get("/approvals/{approval_id}", response_model=ApprovalOut)
    def get_approval(approval_id: str) -> Any:
        try:
            return ApprovalOut.of(book.get(approval_id))
        except ApprovalNotFound as exc:
            return _error(404, str(exc), "not_found_error", "approval_not_found")

    def decide(approval_id: str, body: Decision, approve: bool) -> Any:
        try:
            decided = book.approve(approval_id, body.by, body.note) if approve else book.deny(approval_id, body.by, body.note)
        except ApprovalNotFound as exc:
            return _error(404, str(exc), "not_found_error", "approval_not_found")
        except ApprovalClosed as exc:
            return _error(409, str(exc), "conflict_error", f"approval_{exc.status}")
        return ApprovalOut.of(decided)

    @router.post("/approvals/{approval_id}/approve", response_model=ApprovalOut)
    def approve(approval_id: str, body: Decision | None = None) -> Any:
        return decide(approval_id, body or Decision(), True)

    @router.post("/approvals/{approval_id}/deny", response_model=ApprovalOut)
    def deny(approval_id: str, body: Decision | None = None) -> Any:
        return decide(approval_id, body or Decision(), False)

    return router
