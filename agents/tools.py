"""The tool interface: a class with a name and a few typed functions.

A tool is a subclass of `Tool` whose methods marked with `@function` take the
`ToolContext` and typed keyword arguments and return JSON-like data. The
argument schema (shown to the model, and used to validate what a model or a
rules workflow passes) is derived from the type hints. A custom tool in a few
lines::

    from typing import Annotated
    from pydantic import Field
    from nodeai.agents import Tool, ToolContext, function

    class Weather(Tool):
        \"\"\"Current weather.\"\"\"
        name = "weather"

        @function("Temperature in Celsius of a city")
        def temperature(self, ctx: ToolContext, city: Annotated[str, Field(max_length=64)]) -> dict:
            return {"city": city, "celsius": 21}

    # the provider registers it: AgentRuntime(..., custom_tools={"weather": Weather()})
    # and a spec uses it:        {"type": "custom", "name": "weather"}  ->  "weather.temperature"

Rules of the interface:

* raise `ToolFailure(tool, message, retryable=True)` for transient trouble (network,
  timeouts): the loop retries it ``policy.tool_retries`` times with backoff;
  anything else a tool raises is reported as a non-retryable failure;
* a tool that reaches outside (HTTP, chain) must ask the context first:
  ``ctx.check_domain(host)`` for hosts, ``ctx.signer`` for transactions (the only
  way to send one: tools never see a key);
* functions declared ``effect="write"`` get ``ctx.action_key``, a key unique to
  this call of this job that stays the same when a restarted process repeats
  the call, so a write is never done twice.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from nodeai.agents.errors import AgentError, PolicyDenied, ToolArgumentError, ToolFailure
from nodeai.agents.policy import TxIntent
from nodeai.agents.spec import PolicySpec
from nodeai.agents.transcript import jsonable

Effect = Literal["read", "write"]


class TxGateway(Protocol):
    """What tools see of the policy-gated signer (see ``signer.py``): no key, only ``send``."""

    @property
    def address(self) -> str: ...

    def send(self, intent: TxIntent, ctx: "ToolContext") -> dict[str, Any]: ...


@dataclass
class ToolContext:
    """What a tool call may use from the runtime."""

    job_id: str
    agent: str
    step: int
    action_key: str
    """Unique to this call of this job; the same when a restarted process repeats the call."""
    policy: PolicySpec
    deadline: float | None
    signer: TxGateway | None
    check_domain: Callable[[str], None]
    """Raises `PolicyDenied` unless the host is in ``policy.domains``."""


@dataclass(frozen=True)
class ToolFunction:
    tool: str
    name: str
    description: str
    effect: Effect
    params: type[BaseModel]
    method: Callable[..., Any]

    @property
    def qualified_name(self) -> str:
        return f"{self.tool}.{self.name}"

    def json_schema(self) -> dict[str, Any]:
        schema = self.params.model_json_schema()
        schema.pop("title", None)
        return schema


def function(description: str, *, effect: Effect = "read") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks a method of a `Tool` as callable by agents (``effect="write"`` for side effects)."""

    def mark(method: Callable[..., Any]) -> Callable[..., Any]:
        method.__agent_function__ = (description, effect)  # type: ignore[attr-defined]
        return method

    return mark


class Tool:
    """Base class of tools (see the module docstring for an example)."""

    name: ClassVar[str] = ""
    _functions: ClassVar[dict[str, tuple[str, Effect, type[BaseModel]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, tuple[str, Effect, type[BaseModel]]] = {}
        for attr, member in inspect.getmembers(cls, inspect.isfunction):
            marker = getattr(member, "__agent_function__", None)
            if marker is not None:
                found[attr] = (marker[0], marker[1], _params_model(cls.__name__, attr, member))
        cls._functions = found

    @property
    def tool_name(self) -> str:
        """Name under which the spec and the planner address this tool (instances may override)."""
        return getattr(self, "_tool_name", None) or self.name

    def functions(self) -> dict[str, ToolFunction]:
        return {
            name: ToolFunction(self.tool_name, name, description, effect, params, getattr(self, name))
            for name, (description, effect, params) in self._functions.items()
        }

    def invoke(self, function_name: str, args: Mapping[str, Any], ctx: ToolContext) -> Any:
        """Validate ``args`` and call the function; the result as JSON."""
        fn = self.functions().get(function_name)
        if fn is None:
            raise ToolArgumentError(f"{self.tool_name}.{function_name}",
                                    f"no such function (functions: {', '.join(sorted(self.functions()))})")  # fmt: skip
        if not isinstance(args, Mapping):
            raise ToolArgumentError(fn.qualified_name, f"arguments must be an object, not {type(args).__name__}")
        try:
            parsed = fn.params.model_validate(dict(args))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors())
            raise ToolArgumentError(fn.qualified_name, f"invalid arguments: {problems}") from None
        try:
            result = fn.method(ctx, **{k: getattr(parsed, k) for k in type(parsed).model_fields})
        except AgentError:
            raise
        except Exception as exc:  # NOTE: a bug or an unexpected library error in a tool must not kill the loop
            raise ToolFailure(fn.qualified_name, f"{type(exc).__name__}: {exc}") from exc
        return jsonable(result)

    def close(self) -> None:
        """Release connections; called when the job ends."""


def _params_model(owner: str, name: str, method: Callable[..., Any]) -> type[BaseModel]:
    hints = typing.get_type_hints(method, include_extras=True)
    fields: dict[str, Any] = {}
    for i, (pname, param) in enumerate(inspect.signature(method).parameters.items()):
        if i < 2:  # NOTE: self, ctx
            continue
        annotation = hints.get(pname, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (annotation, default)
    return create_model(f"{owner}_{name}_args", __config__=ConfigDict(extra="forbid"), **fields)


__all__ = ["Tool", "ToolContext", "ToolFunction", "TxGateway", "function", "PolicyDenied", "ToolFailure"]
