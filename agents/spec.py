"""The agent spec: what an agent is, as published on IPFS and registered on chain.

A spec is a versioned JSON document (``spec_version`` 1): the model it runs on,
its system prompt, its planner (``llm`` or ``rules``), its tools with their
configuration, its policy and a step limit. The publisher pins the canonical
JSON (`AgentSpec.to_json`) on IPFS and registers the CID with
``ModelRegistry.registerAgent(specCid, baseModelId, pricePer1kTokens,
revenueShareBps)``; a provider fetches it by CID, verifies it and runs it.

Load specs with `load_spec` (or `AgentSpec.load`): an invalid spec raises
`SpecError` listing every problem with the path of the field, e.g.
``planner.rules[2].when: unknown name 'mvoe' (known here: agent, input, ...)``.

A treasury rebalancer, in short (the full one is in ``tests/agents``)::

    {"spec_version": 1, "name": "treasury-bot", "system_prompt": "Keep 60/40.",
     "planner": {"kind": "rules", "vars": {"token": "0x...", "ops": "0x..."},
                 "rules": [
        {"id": "mine", "call": "evm.erc20_balance", "args": {"token": "${vars.token}", "account": "${agent.address}"}, "save_as": "t"},
        {"id": "theirs", "call": "evm.erc20_balance", "args": {"token": "${vars.token}", "account": "${vars.ops}"}, "save_as": "o"},
        {"id": "plan", "set": {"move": "(t.balance + o.balance) * extract_ints(input)[1] // 100 - o.balance"}},
        {"id": "send", "when": "move > 0", "call": "evm.erc20_transfer", "args": {"token": "${vars.token}", "to": "${vars.ops}", "amount": "${move}"}},
        {"id": "done", "finish": {"moved": "${max(move, 0)}"}}]},
     "tools": [{"type": "evm", "chain_id": 31337}],
     "policy": {"contracts": [{"chain_id": 31337, "address": "0x...", "functions": ["transfer(address,uint256)"]}],
                "spend_caps": [{"chain_id": 31337, "token": "0x...", "max_amount": 500000000, "period_s": 86400,
                                "approval_above": 100000000}]},
     "max_steps": 10}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from eth_utils import is_address, to_checksum_address
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nodeai.agents import expressions
from nodeai.agents.errors import ExpressionError, SpecError

SPEC_VERSION = 1

# NOTE: the functions of the built-in tools, so a rules workflow naming a missing
# function is rejected when the spec is loaded, not halfway through a paid job.
# tests/agents/test_tools.py checks this table against the tool classes.
BUILTIN_FUNCTIONS: dict[str, frozenset[str]] = {
    "evm": frozenset({"native_balance", "erc20_balance", "call", "erc20_transfer", "transact"}),
    "ipfs": frozenset({"get", "put"}),
    "http": frozenset({"fetch"}),
    "sql": frozenset({"query"}),
}
# NOTE: the names every rules expression may read besides the workflow's own variables.
BASE_NAMES = frozenset({"input", "vars", "agent", "job"})

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SIGNATURE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\((?:[a-z0-9\[\]]+(?:,[a-z0-9\[\]]+)*)?\)$")
_HOST = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _address(value: str) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise ValueError(f"{value!r} is not an EVM address (0x followed by 40 hex digits)")
    return to_checksum_address(value)


Address = Annotated[str, AfterValidator(_address)]


def _token(value: str) -> str:
    return "native" if value == "native" else _address(value)


TokenRef = Annotated[str, AfterValidator(_token)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- tools ------------------------------------------------------------------------------------
class _ToolConfig(_Model):
    functions: list[str] | None = None
    """Offer only these functions of the tool (least privilege, and a shorter prompt); None: all."""


class ContractConfig(_Model):
    """A contract the EVM tool knows by alias (its ABI makes ``call``/``transact`` by name possible)."""

    address: Address
    abi: list[dict[str, Any]] | Literal["erc20"] = "erc20"
    """The contract's ABI (list of entries) or ``"erc20"`` for the standard token ABI."""


class EvmToolConfig(_ToolConfig):
    """Read balances and view functions of one EVM chain; send transactions through the policy-gated signer."""

    type: Literal["evm"]
    name: str = "evm"
    """Name the planner uses (``evm.erc20_balance``); change it to use two chains in one agent."""
    chain_id: int = Field(gt=0)
    """Chain the tool talks to; the provider maps it to an RPC URL."""
    contracts: dict[str, ContractConfig] = {}
    """Aliases usable in place of addresses, with ABIs for ``call`` and ``transact``."""


class IpfsToolConfig(_ToolConfig):
    """Get and put content by CID (always verified against the CID)."""

    type: Literal["ipfs"]
    name: str = "ipfs"
    max_bytes: int = Field(default=1 << 20, gt=0, le=64 << 20)
    timeout_s: float = Field(default=30.0, gt=0, le=600)


class HttpToolConfig(_ToolConfig):
    """Fetch URLs on the policy's allowed domains, with size, time and redirect limits."""

    type: Literal["http"]
    name: str = "http"
    max_bytes: int = Field(default=256 << 10, gt=0, le=16 << 20)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    max_redirects: int = Field(default=3, ge=0, le=10)


class SqlToolConfig(_ToolConfig):
    """Read-only SELECTs over the indexer's database (the provider supplies its URL)."""

    type: Literal["sql"]
    name: str = "sql"
    max_rows: int = Field(default=200, gt=0, le=10_000)
    timeout_s: float = Field(default=5.0, gt=0, le=120)


class CustomToolConfig(_ToolConfig):
    """A tool the provider registered with the runtime under ``name``; ``config`` is passed to it."""

    type: Literal["custom"]
    name: str
    config: dict[str, Any] = {}


ToolConfig = Annotated[
    Union[EvmToolConfig, IpfsToolConfig, HttpToolConfig, SqlToolConfig, CustomToolConfig], Field(discriminator="type")
]


# -- policy -----------------------------------------------------------------------------------
class Budget(_Model):
    model_tokens: int | None = Field(default=None, ge=0)
    """Most model tokens (prompt + completion) one job may use; None: no limit besides payment."""
    payment_units: int | None = Field(default=None, ge=0)
    """Most payment-token units one job's model use may cost (tokens x price per 1k / 1000)."""


class SpendCap(_Model):
    """At most ``max_amount`` of ``token`` on ``chain_id`` per sliding ``period_s``, across all jobs of the agent."""

    chain_id: int = Field(gt=0)
    token: TokenRef
    """ERC-20 address, or ``"native"`` for the chain's coin (wei)."""
    max_amount: int = Field(ge=0)
    period_s: int = Field(gt=0)
    approval_above: int | None = Field(default=None, ge=0)
    """A single spend above this waits for a human approval."""


class ContractRule(_Model):
    """A contract the agent may send transactions to, and which of its functions."""

    chain_id: int = Field(gt=0)
    address: Address
    functions: list[str] = ["*"]
    """Canonical signatures such as ``transfer(address,uint256)``, or ``"*"`` for any."""

    @field_validator("functions")
    @classmethod
    def _signatures(cls, value: list[str]) -> list[str]:
        for sig in value:
            if sig != "*" and not _SIGNATURE.match(sig.replace(" ", "")):
                raise ValueError(f"{sig!r} is not a canonical function signature such as 'transfer(address,uint256)'")
        return [s.replace(" ", "") for s in value]


class RateLimit(_Model):
    calls: int = Field(gt=0)
    per_s: float = Field(gt=0)


class PolicySpec(_Model):
    """What an agent may do. Everything not allowed here is refused."""

    budget: Budget = Budget()
    spend_caps: list[SpendCap] = []
    """Tokens without a cap cannot be spent at all."""
    contracts: list[ContractRule] = []
    """Transactions may only go to these contracts and functions."""
    domains: list[str] = []
    """Hosts the HTTP tool may fetch from (``example.com`` or ``*.example.com``)."""
    rate_limits: dict[str, RateLimit] = {}
    """Per tool (``http``) or tool function (``http.fetch``)."""
    tool_retries: int = Field(default=2, ge=0, le=10)
    """Retries of a tool call that failed for a transient reason (RPC error, timeout)."""
    retry_backoff_s: float = Field(default=0.2, ge=0, le=30)

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        out = []
        for host in value:
            host = host.strip().lower().rstrip(".")
            if not _HOST.match(host):
                raise ValueError(f"{host!r} is not a host name (use 'example.com' or '*.example.com', no scheme or path)")
            out.append(host)
        return out

    @field_validator("spend_caps")
    @classmethod
    def _unique_caps(cls, value: list[SpendCap]) -> list[SpendCap]:
        seen = set()
        for cap in value:
            key = (cap.chain_id, cap.token)
            if key in seen:
                raise ValueError(f"two spend caps for token {cap.token} on chain {cap.chain_id}: keep one")
            seen.add(key)
        return value


# -- planners ---------------------------------------------------------------------------------
class LlmPlanner(_Model):
    """The model picks each next action (OpenAI-style tool calls or a JSON object)."""

    kind: Literal["llm"]
    max_tokens: int = Field(default=256, gt=0, le=8192)
    """Completion tokens per step."""
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_malformed: int = Field(default=3, ge=1, le=20)
    """Consecutive unusable model outputs before the job fails."""
    json_schema: bool = True
    """Ask the engine for grammar-constrained JSON where it supports it."""
    max_arg_chars: int = Field(default=96, ge=8, le=4096)
    """Longest string argument the JSON grammar allows (an address is 42, a URL more): bounds how long a
    small model can ramble inside a string; the tools still validate every argument."""
    history_steps: int = Field(default=8, ge=1, le=100)
    """Most recent tool results shown to the model."""


class Rule(_Model):
    """One step of a rules workflow: exactly one of ``call``, ``set``, ``finish``, ``fail``."""

    id: str
    when: str | None = None
    """Condition (expression); the rule is skipped when false."""
    call: str | None = None
    """Tool function to call, ``tool.function``."""
    args: dict[str, Any] = {}
    """Arguments; ``"${expr}"`` values are computed."""
    save_as: str | None = None
    """Variable that receives the tool's result."""
    set: dict[str, str] | None = None
    """Variables to compute: name -> expression."""
    finish: Any = None
    """Ends the job with this output (templates resolved)."""
    fail: str | None = None
    """Ends the job as failed with this reason (templates resolved)."""
    on_error: Literal["fail", "continue"] = "fail"
    """After a failed call (retries exhausted or policy denial): fail the job, or save ``{"error": ...}`` and go on."""

    @property
    def action_kind(self) -> str:
        """``call``, ``set``, ``finish`` or ``fail``: the one this rule has."""
        return next(k for k in ("call", "set", "finish", "fail") if self._has(k))

    def _has(self, key: str) -> bool:
        # NOTE: a null value counts as absent (so the canonical JSON, which lists every field,
        # reloads to the same rule): finish with a value such as {} or "done"
        return getattr(self, key) is not None

    @model_validator(mode="after")
    def _one_action(self) -> "Rule":
        chosen = [k for k in ("call", "set", "finish", "fail") if self._has(k)]
        if len(chosen) != 1:
            raise ValueError(f"rule {self.id!r} needs exactly one of call, set, finish, fail (has: {', '.join(chosen) or 'none'};"
                             " a null value counts as none)")
        if self.save_as is not None and self.call is None:
            raise ValueError(f"rule {self.id!r}: save_as only goes with call")
        if self.args and self.call is None:
            raise ValueError(f"rule {self.id!r}: args only go with call")
        return self


class RulesPlanner(_Model):
    """A deterministic workflow: rules run in order, each skipped unless its ``when`` holds."""

    kind: Literal["rules"]
    vars: dict[str, Any] = {}
    """Constants the rules read as ``vars.NAME``."""
    rules: list[Rule] = Field(min_length=1)


Planner = Annotated[Union[LlmPlanner, RulesPlanner], Field(discriminator="kind")]


# -- the spec ---------------------------------------------------------------------------------
class AgentSpec(_Model):
    """A versioned agent spec (see the module docstring)."""

    spec_version: Literal[1]
    name: str
    """Lower-case name (letters, digits, - and _), e.g. ``treasury-bot``."""
    description: str = ""
    model: str | None = None
    """Model id as the serving gateway lists it (needed by the ``llm`` planner)."""
    base_model_id: int | None = Field(default=None, ge=0)
    """On-chain id of the base model (``registerAgent``'s ``baseModelId``)."""
    system_prompt: str = ""
    planner: Planner
    tools: list[ToolConfig] = []
    policy: PolicySpec = PolicySpec()
    max_steps: int = Field(default=16, ge=1, le=1000)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a valid agent name (lower-case letters, digits, '-' and '_', at most 63)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "AgentSpec":
        problems = _semantic_problems(self)
        if problems:
            raise SpecError(problems)
        return self

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): the bytes pinned on IPFS, so a spec has one CID."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def load(cls, source: bytes | str | Mapping[str, Any]) -> "AgentSpec":
        return load_spec(source)

    def tool(self, name: str) -> ToolConfig | None:
        return next((t for t in self.tools if t.name == name), None)


def _semantic_problems(spec: AgentSpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    for i, tool in enumerate(spec.tools):
        if not _IDENT.match(tool.name):
            problems.append((f"tools[{i}].name", f"{tool.name!r} is not an identifier (letters, digits, _)"))
        if tool.name in names:
            problems.append((f"tools[{i}].name", f"tool name {tool.name!r} already used by tools[{names[tool.name]}]: rename one"))
        names[tool.name] = i
        for function in tool.functions or []:
            if tool.type != "custom" and function not in BUILTIN_FUNCTIONS[tool.type]:
                known_fns = ", ".join(sorted(BUILTIN_FUNCTIONS[tool.type]))
                problems.append((f"tools[{i}].functions", f"tool {tool.name!r} has no function {function!r} (it has: {known_fns})"))
    tools = {t.name: t for t in spec.tools}
    if isinstance(spec.planner, LlmPlanner) and not spec.model:
        problems.append(("model", "the llm planner needs a model id (as the serving gateway lists it)"))
    for key in spec.policy.rate_limits:
        tool_name, _, function = key.partition(".")
        if tool_name not in tools:
            problems.append((f"policy.rate_limits.{key}", f"no tool named {tool_name!r} (tools: {', '.join(tools) or 'none'})"))
        elif function and not _known_function(tools[tool_name], function):
            problems.append((f"policy.rate_limits.{key}", f"tool {tool_name!r} has no function {function!r}"))
    if isinstance(spec.planner, RulesPlanner):
        problems += _rules_problems(spec.planner, tools)
    return problems


def _known_function(tool: Any, function: str) -> bool:
    if tool.functions is not None and function not in tool.functions:
        return False
    return tool.type == "custom" or function in BUILTIN_FUNCTIONS[tool.type]


def _rules_problems(planner: RulesPlanner, tools: dict[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    known = set(BASE_NAMES)
    ids: set[str] = set()
    for i, rule in enumerate(planner.rules):
        where = f"planner.rules[{i}]"
        if rule.id in ids:
            problems.append((f"{where}.id", f"rule id {rule.id!r} is used twice"))
        ids.add(rule.id)

        def check(path: str, expression: str) -> None:
            try:
                expressions.check(expression, known)
            except ExpressionError as exc:
                problems.append((f"{where}.{path}", exc.problem + f" in {expression!r}"))

        if rule.when is not None:
            check("when", rule.when)
        if rule.call is not None:
            tool_name, _, function = rule.call.partition(".")
            if tool_name not in tools:
                problems.append((f"{where}.call", f"no tool named {tool_name!r} (tools: {', '.join(tools) or 'none'})"))
            elif not function:
                problems.append((f"{where}.call", f"name the function too: '{tool_name}.FUNCTION'"))
            elif not _known_function(tools[tool_name], function):
                config = tools[tool_name]
                known_fns = ", ".join(sorted(config.functions or BUILTIN_FUNCTIONS.get(config.type, ())))
                problems.append((f"{where}.call", f"tool {tool_name!r} has no function {function!r} (it has: {known_fns})"))
            for key, value in rule.args.items():
                for expression in expressions.template_expressions(value):
                    check(f"args.{key}", expression)
        for name, expression in (rule.set or {}).items():
            check(f"set.{name}", expression)
            known.add(name)  # NOTE: set runs in order: later entries of the same rule may read it
        for expression in expressions.template_expressions(rule.finish) + expressions.template_expressions(rule.fail):
            check(rule.action_kind, expression)
        for name in [rule.save_as] if rule.save_as else list(rule.set or {}):
            if not _IDENT.match(name) or name in BASE_NAMES or name in expressions.FUNCTIONS:
                problems.append((f"{where}.{'save_as' if rule.save_as else 'set'}",
                                 f"{name!r} cannot be a variable name (identifier, not one of {', '.join(sorted(BASE_NAMES))})"))  # fmt: skip
            known.add(name)
    return problems


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        # NOTE: pydantic puts a discriminated union's tag in the path (planner.rules.rules[2]);
        # users never wrote it, so it is left out.
        tagged = i > 0 and (loc[i - 1] == "planner" or (i > 1 and loc[i - 2] == "tools" and isinstance(loc[i - 1], int)))
        if tagged and isinstance(part, str):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_spec(source: bytes | str | Mapping[str, Any]) -> AgentSpec:
    """Validate a spec from JSON bytes/text or a mapping; raises `SpecError` listing each problem."""
    if isinstance(source, (bytes, str)):
        try:
            data = json.loads(source)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpecError([("", f"not valid JSON: {exc}")]) from None
    else:
        data = source
    if not isinstance(data, Mapping):
        raise SpecError([("", f"a spec is a JSON object, not {type(data).__name__}")])
    version = data.get("spec_version")
    if version != SPEC_VERSION:
        raise SpecError([("spec_version", f"unsupported spec version {version!r}: this runtime reads version {SPEC_VERSION}")])
    try:
        return AgentSpec.model_validate(data)
    except ValidationError as exc:
        problems: list[tuple[str, str]] = []
        for err in exc.errors():
            inner = (err.get("ctx") or {}).get("error")
            if isinstance(inner, SpecError):
                problems += inner.problems
            else:
                message = err["msg"].removeprefix("Value error, ")
                problems.append((_loc(err["loc"]), message))
        raise SpecError(problems) from None


def spec_template(name: str, *, tools: list[str], budget: int | None, model: str | None = None, chain_id: int = 31337,
                  system_prompt: str = "") -> AgentSpec:
    """A starting spec for ``nodeai agents create NAME --tools=rpc,sql,ipfs --budget=50``: an ``llm``
    agent with those tools, a payment budget (None: no limit but the job's escrow) and nothing it may
    spend until the owner adds caps."""
    aliases = {"rpc": "evm", "evm": "evm", "ipfs": "ipfs", "http": "http", "sql": "sql"}
    configs: list[dict[str, Any]] = []
    for tool in tools:
        kind = aliases.get(tool.strip().lower())
        if kind is None:
            raise SpecError([("tools", f"unknown tool {tool!r} (known: {', '.join(sorted(aliases))})")])
        configs.append({"type": kind, **({"chain_id": chain_id} if kind == "evm" else {})})
    return load_spec({
        "spec_version": SPEC_VERSION, "name": name, "model": model or "smollm2-135m-instruct",
        "system_prompt": system_prompt or f"You are {name}, an on-chain operations agent. Use the tools; answer briefly.",
        "planner": {"kind": "llm"}, "tools": configs, "policy": {"budget": {"payment_units": budget}},
    })  # fmt: skip
