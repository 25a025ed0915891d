"""The option tables of docs/operator-guide.md, generated from the config models.

    .venv/bin/python -m tests.docs.config_tables --write    # rewrite the tables in the guide
    .venv/bin/python -m tests.docs.config_tables --check    # exit 1 when a table is stale

Each option of the provider daemon (``nodeai.node.config.NodeConfig``) and of
the gateway (``nodeai.serving.gateway.config.GatewayConfig`` with its
``limits``) is one row: the option, its type and bounds, its default, how to
override it, and its docstring (the description pydantic keeps). The rows sit
between marker comments in the guide; ``tests/docs/test_docs.py`` fails when
they differ from a fresh generation, so a new or changed option shows up in
the guide or the test says which command updates it.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operator-guide.md"
NODE_ENV_PREFIX = "NODEAI_NODE__"


def _begin(name: str) -> str:
    return f"<!-- generated: {name} (.venv/bin/python -m tests.docs.config_tables --write) -->"


def _end(name: str) -> str:
    return f"<!-- end of generated: {name} -->"


def _type(annotation: Any) -> str:
    """A short, readable type: ``int``, ``path or none``, ``"a" | "b"``, ``list of table``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or none" if type(None) in args else text
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (list, typing.List):
        return f"list of {_type(args[0])}" if args else "list"
    if origin in (dict, typing.Dict):
        return f"table of {_type(args[1])}" if args else "table"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    marks = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    found = []
    for item in field.metadata:
        for attr, mark in marks.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{mark} {value:_}" if isinstance(value, int) else f"{mark} {value}")
    return ", ".join(found)


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, (int, float)):
        return f"`{value:_}`" if isinstance(value, int) and abs(value) >= 100_000 else f"`{value}`"
    if isinstance(value, list) and len(value) > 3:
        return f"{len(value)} entries (see the source)"
    return f"`{json.dumps(value)}`"


def _attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """Docstrings under the fields of a model whose config does not keep them (``Limits``)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(model)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = after.value.value
    return docs


def _description(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    return _cell(field.description or _attribute_docs(model).get(name))


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) in (list, typing.List):
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _flag(annotation: Any) -> bool:
    """Whether ``python -m nodeai.serving.gateway`` makes a flag of a field of this type (see its __main__)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(args) == 1 and _flag(args[0])
    if origin is typing.Literal:
        return True
    return annotation in (str, int, float, bool, Path)


HEADER = ["| option | type | default | override | description |", "| --- | --- | --- | --- | --- |"]


def node_table() -> str:
    from nodeai.node.config import NodeConfig

    return "\n".join(HEADER + [row for row in _node_rows(NodeConfig) if row])


def _node_rows(model: type[BaseModel]) -> Iterator[str]:
    # NOTE: the list-of-tables option (provider.models) gets one row per sub-option, each with its docstring.
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _section_rows(annotation, f"{name}.", f"{NODE_ENV_PREFIX}{name.upper()}__")
        else:
            yield from _section_rows_single(name, field, NODE_ENV_PREFIX)


def _section_rows_single(name: str, field: FieldInfo, env: str) -> Iterator[str]:
    default = field.get_default(call_default_factory=True)
    bounds = _bounds(field)
    yield (f"| `{name}` | {_type(field.annotation)}{' (' + bounds + ')' if bounds else ''} | {_value(default)} "
           f"| `{env}{name.upper()}` | {_cell(field.description)} |")


def _section_rows(model: type[BaseModel], prefix: str, env: str) -> Iterator[str]:
    for name, field in model.model_fields.items():
        key = field.alias or name
        yield from (row.replace(f"`{key}`", f"`{prefix}{key}`", 1) for row in _section_rows_single(key, field, env))
        item = _list_item_model(field.annotation)
        if item is None:
            continue
        for sub, spec in item.model_fields.items():
            bounds = _bounds(spec)
            default = "required" if spec.is_required() else _value(spec.get_default(call_default_factory=True))
            yield (f"| `{prefix}{key}[].{sub}` | {_type(spec.annotation)}{' (' + bounds + ')' if bounds else ''} "
                   f"| {default} | in `{env}{key.upper()}` (JSON) | {_cell(spec.description)} |")


def gateway_table() -> str:
    from nodeai.serving.gateway.config import GatewayConfig

    rows = []
    for name, field in GatewayConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub, spec in annotation.model_fields.items():
                bounds = _bounds(spec)
                rows.append(f"| `{name}.{sub}` | {_type(spec.annotation)}{' (' + bounds + ')' if bounds else ''} "
                            f"| {_value(spec.get_default(call_default_factory=True))} | file only "
                            f"| {_description(annotation, sub, spec)} |")
            continue
        bounds = _bounds(field)
        override = f"`--{name.replace('_', '-')}`" if _flag(annotation) else "file only"
        rows.append(f"| `{name}` | {_type(annotation)}{' (' + bounds + ')' if bounds else ''} "
                    f"| {_value(field.get_default(call_default_factory=True))} | {override} | {_cell(field.description)} |")
    return "\n".join(HEADER + rows)


TABLES = {"node-config": node_table, "gateway-config": gateway_table}


def fields_of(name: str) -> list[str]:
    """The option paths a table lists (for the test's error messages)."""
    return [line.split("`")[1] for line in TABLES[name]().splitlines()[2:]]


def render(text: str) -> str:
    """``text`` with every generated block replaced by a fresh generation."""
    for name, make in TABLES.items():
        begin, end = _begin(name), _end(name)
        start = text.find(begin)
        stop = text.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"{GUIDE.name} lacks the markers of the {name} table: {begin} ... {end}")
        text = text[: start + len(begin)] + "\n" + make() + "\n" + text[stop:]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the config option tables of docs/operator-guide.md.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the tables in the guide")
    mode.add_argument("--check", action="store_true", help="exit 1 when a table is stale")
    args = parser.parse_args(argv)
    current = GUIDE.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(f"{GUIDE} has stale option tables: run `.venv/bin/python -m tests.docs.config_tables --write`",
                  file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        GUIDE.write_text(fresh)
        print(f"updated {GUIDE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
