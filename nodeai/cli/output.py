"""What commands print: human text on a terminal, one JSON document with ``--json``.

Human output goes to stdout, progress and status lines to stderr, so
``nodeai ... --json | jq`` always reads exactly one JSON document.
Amounts are shown in token units (``12.5 TUSD``) and kept raw (base units,
integers) in JSON, so scripts never parse decimals.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Sequence

import click

from nodeai.cli.errors import UserError


def to_jsonable(value: Any) -> Any:
    """Bytes as 0x-hex, dataclass-like objects and enums as plain values."""
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "name") and hasattr(value, "value") and isinstance(getattr(value, "value"), int):
        return value.name  # IntEnum such as JobState
    return value


def print_json(data: Any) -> None:
    click.echo(json.dumps(to_jsonable(data), indent=2, sort_keys=False))


def status(message: str) -> None:
    """A progress line for people (stderr, so it never mixes with --json on stdout)."""
    click.echo(message, err=True)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit(json_mode: bool, data: Any, human: str | Callable[[], str]) -> None:
    """Print ``data`` as JSON in --json mode, else the human rendering."""
    if json_mode:
        print_json(data)
    else:
        click.echo(human() if callable(human) else human)


# -- amounts ------------------------------------------------------------------------------------
def check_amount(text: str | None, what: str = "amount") -> Decimal | None:
    """The number in ``text``, or a user error; needs no chain, so a typo fails before any connection."""
    if text is None:
        return None
    try:
        value = Decimal(text.replace("_", ""))
    except InvalidOperation:
        raise UserError(f"{what} {text!r} is not a number", "write it like 12.5 (token units) or use --raw for base units") from None
    if not value.is_finite() or value < 0:
        raise UserError(f"{what} must be a non-negative number, got {text!r}")
    return value


def parse_amount(text: str, decimals: int, raw: bool, what: str = "amount") -> int:
    """``"12.5"`` -> 12_500_000 for a 6-decimal token; with ``raw`` the text is already base units."""
    value = check_amount(text, what)
    assert value is not None
    scaled = value if raw else value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        unit = "base units are whole numbers" if raw else f"the token has {decimals} decimals"
        raise UserError(f"{what} {text} has too many decimal places: {unit}")
    return int(scaled)


def format_amount(amount: int, decimals: int, symbol: str = "") -> str:
    """12_500_000 -> ``"12.5 TUSD"`` (exact, no float rounding)."""
    whole = Decimal(amount).scaleb(-decimals)
    text = format(whole.normalize(), "f") if amount else "0"
    return f"{text} {symbol}".rstrip()


def when(timestamp: int | None) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: int) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7_200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def short(address: str | None) -> str:
    if not address or address == "0x" + "0" * 40:
        return "-"
    return f"{address[:6]}..{address[-4:]}"


def parse_duration(text: str) -> int:
    """``"90"``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
    body, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = int(float(body) * units[unit])
    except ValueError:
        raise UserError(f"duration {text!r} is not understood", "write it like 90s, 30m, 2h or 1d") from None
    if seconds <= 0:
        raise UserError(f"duration must be positive, got {text!r}")
    return seconds


def join(items: Iterable[str]) -> str:
    return "\n".join(items)
