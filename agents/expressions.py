"""A small, safe expression language for the ``rules`` planner (pure; no I/O).

Conditions and computed arguments of a rules workflow are Python-like
expressions over JSON values::

    t.balance + o.balance                      # arithmetic on tool results
    move > 0 and move <= vars.max_move         # comparisons, and / or / not
    extract_ints(input)[0] * total // 100      # "Rebalance to 60/40" -> 60
    "ok" if move == 0 else "moved"             # conditional

Only literals, names, ``x.field`` / ``x[key]`` lookups into JSON objects and
lists, arithmetic, comparisons and the functions in ``FUNCTIONS`` exist: no
attribute of a Python object is ever reachable (``x.__class__`` is just a
missing key), so a spec published by anyone cannot run code on a provider.

In argument values, a string that is exactly ``${expr}`` becomes the value of
``expr`` (keeping its type); ``${expr}`` inside a longer string is replaced by
its text. Every other value is taken literally.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from nodeai.agents.errors import ExpressionError

_TEMPLATE = re.compile(r"\$\{([^{}]*)\}")
MAX_SEQUENCE = 100_000  # NOTE: bounds "a" * n and [0] * n so a spec cannot exhaust memory
MAX_EXPONENT = 256
MAX_INT_BITS = 4_096


def _extract_ints(text: Any) -> list[int]:
    return [int(m) for m in re.findall(r"-?\d+", str(text))]


def _int(value: Any) -> int:
    if isinstance(value, str):
        return int(value.strip(), 0)  # NOTE: accepts "0x..." as well as decimal text
    return int(value)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "int": _int,
    "float": float,
    "str": str,
    "bool": bool,
    "len": len,
    "sum": sum,
    "round": round,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "extract_ints": _extract_ints,
}

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
}
_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


def parse(expression: str) -> ast.expr:
    """Parse and check one expression; raises `ExpressionError` naming the unsupported part."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError(str(expression), "empty expression")
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExpressionError(expression, f"syntax error: {exc.msg}") from None
    for node in ast.walk(tree):
        _check_node(expression, node)
    return tree


def _check_node(expression: str, node: ast.AST) -> None:
    allowed = (
        ast.Constant, ast.Name, ast.Load, ast.Attribute, ast.Subscript, ast.BinOp, ast.UnaryOp, ast.BoolOp,
        ast.Compare, ast.IfExp, ast.Call, ast.List, ast.Tuple, ast.Dict, ast.And, ast.Or, ast.Not, ast.USub,
        ast.UAdd, ast.Slice, *_BINOPS, *_CMPOPS,
    )  # fmt: skip
    if not isinstance(node, allowed):
        raise ExpressionError(expression, f"{type(node).__name__} is not allowed in an expression")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise ExpressionError(expression, f"unknown function {name!r} (known: {', '.join(sorted(FUNCTIONS))})")
        if node.keywords:
            raise ExpressionError(expression, "keyword arguments are not supported")
    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
        raise ExpressionError(expression, f"field names starting with '_' are not allowed ({node.attr!r})")
    if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str, bool, type(None))):
        raise ExpressionError(expression, f"literal {node.value!r} is not a JSON value")


def free_names(tree: ast.expr) -> set[str]:
    """Variable names an expression reads (function names excluded)."""
    functions = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in functions}


def check(expression: str, known: Iterable[str]) -> None:
    """Parse ``expression`` and make sure it reads only ``known`` names."""
    known = set(known)
    unknown = sorted(free_names(parse(expression)) - known)
    if unknown:
        raise ExpressionError(expression, f"unknown name {unknown[0]!r} (known here: {', '.join(sorted(known))})")


def evaluate(expression: str, env: Mapping[str, Any]) -> Any:
    """The value of ``expression`` with variables from ``env``; errors are `ExpressionError`."""
    tree = parse(expression)
    try:
        return _eval(tree, env, expression)
    except ExpressionError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, KeyError, IndexError, OverflowError) as exc:
        raise ExpressionError(expression, f"{type(exc).__name__}: {exc}") from None


def _eval(node: ast.expr, env: Mapping[str, Any], src: str) -> Any:
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name(id=name):
            if name not in env:
                raise ExpressionError(src, f"unknown name {name!r}")
            return env[name]
        case ast.Attribute(value=inner, attr=attr):
            obj = _eval(inner, env, src)
            if not isinstance(obj, Mapping):
                raise ExpressionError(src, f"cannot read field {attr!r} of a {type(obj).__name__}")
            if attr not in obj:
                raise ExpressionError(src, f"no field {attr!r} (fields: {', '.join(map(str, obj)) or 'none'})")
            return obj[attr]
        case ast.Subscript(value=inner, slice=index):
            obj = _eval(inner, env, src)
            if isinstance(index, ast.Slice):
                parts = [None if p is None else _eval(p, env, src) for p in (index.lower, index.upper, index.step)]
                return obj[slice(*parts)]
            key = _eval(index, env, src)
            if isinstance(obj, Mapping):
                if key not in obj:
                    raise ExpressionError(src, f"no key {key!r}")
                return obj[key]
            if isinstance(obj, (list, tuple, str)) and isinstance(key, int) and not isinstance(key, bool):
                return obj[key]
            raise ExpressionError(src, f"cannot index a {type(obj).__name__} with {key!r}")
        case ast.BinOp(left=left, op=op, right=right):
            a, b = _eval(left, env, src), _eval(right, env, src)
            _check_operands(src, op, a, b)
            return _limit(src, _BINOPS[type(op)](a, b))
        case ast.UnaryOp(op=op, operand=operand):
            value = _eval(operand, env, src)
            if isinstance(op, ast.Not):
                return not value
            if not isinstance(value, (int, float)):
                raise ExpressionError(src, f"unary {'-' if isinstance(op, ast.USub) else '+'} needs a number")
            return -value if isinstance(op, ast.USub) else +value
        case ast.BoolOp(op=op, values=values):
            result: Any = None
            for item in values:
                result = _eval(item, env, src)
                if isinstance(op, ast.And) and not result:
                    return result
                if isinstance(op, ast.Or) and result:
                    return result
            return result
        case ast.Compare(left=left, ops=ops, comparators=comparators):
            a = _eval(left, env, src)
            for op, comparator in zip(ops, comparators):
                b = _eval(comparator, env, src)
                if not _CMPOPS[type(op)](a, b):
                    return False
                a = b
            return True
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return _eval(body if _eval(test, env, src) else orelse, env, src)
        case ast.Call(func=ast.Name(id=name), args=args):
            return _limit(src, FUNCTIONS[name](*[_eval(a, env, src) for a in args]))
        case ast.List(elts=elts) | ast.Tuple(elts=elts):
            return [_eval(e, env, src) for e in elts]
        case ast.Dict(keys=keys, values=values):
            if any(k is None for k in keys):
                raise ExpressionError(src, "** in a dict literal is not supported")
            return {_eval(k, env, src): _eval(v, env, src) for k, v in zip(keys, values)}  # type: ignore[arg-type]
    raise ExpressionError(src, f"{type(node).__name__} is not allowed in an expression")


def _check_operands(src: str, op: ast.operator, a: Any, b: Any) -> None:
    if isinstance(op, ast.Pow):
        if not isinstance(b, (int, float)) or abs(b) > MAX_EXPONENT:
            raise ExpressionError(src, f"exponent must be a number of at most {MAX_EXPONENT}")
    if isinstance(op, ast.Mult) and isinstance(a, (str, list)) != isinstance(b, (str, list)):
        count = b if isinstance(a, (str, list)) else a
        size = len(a) if isinstance(a, (str, list)) else len(b)
        if isinstance(count, int) and count * size > MAX_SEQUENCE:
            raise ExpressionError(src, f"result longer than {MAX_SEQUENCE:,} items")


def _limit(src: str, value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionError(src, f"integer larger than {MAX_INT_BITS} bits")
    if isinstance(value, (str, list)) and len(value) > MAX_SEQUENCE:
        raise ExpressionError(src, f"result longer than {MAX_SEQUENCE:,} items")
    return value


def is_template(value: Any) -> bool:
    return isinstance(value, str) and bool(_TEMPLATE.search(value))


def template_expressions(value: Any) -> list[str]:
    """Every ``${expr}`` inside a (nested) argument value."""
    if isinstance(value, str):
        return [m.group(1) for m in _TEMPLATE.finditer(value)]
    if isinstance(value, Mapping):
        return [e for v in value.values() for e in template_expressions(v)]
    if isinstance(value, (list, tuple)):
        return [e for v in value for e in template_expressions(v)]
    return []


def render(value: Any, env: Mapping[str, Any]) -> Any:
    """Resolve ``${expr}`` templates inside a (nested) argument value."""
    if isinstance(value, str):
        whole = _TEMPLATE.fullmatch(value)
        if whole:
            return evaluate(whole.group(1), env)
        return _TEMPLATE.sub(lambda m: _text(evaluate(m.group(1), env)), value)
    if isinstance(value, Mapping):
        return {k: render(v, env) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render(v, env) for v in value]
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)
