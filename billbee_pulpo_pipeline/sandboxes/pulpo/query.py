"""PULPO's query conventions: operator filters, list parameters, paging and error bodies.

Filters take `field=value` or an operator prefix (`gte:`, `gt:`, `lte:`, `lt:`, `between:a,b`,
`to_list:a,b`); several values arrive as `id[]=1&id[]=2`. Dates compare as `YYYY-MM-DD hh:mm:ss`
(a `T` separator, fractions and a `Z` are tolerated); a date without a time means midnight, except
for a plain `updated_at=YYYY-MM-DD`, which matches the whole day.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse

from billbee_pulpo_pipeline.sandboxes.common import SandboxError

Record = dict[str, Any]
Query = dict[str, list[str]]
Predicate = Callable[[Any], bool]
Getter = Callable[[Record], Any]

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"  # Ecto naive datetime as Phoenix renders it, in UTC
DEFAULT_LIMIT = 10  # the spec's documented default ("limit and offset are 0 and 10")
MAX_LIMIT = 100  # real PULPO caps page sizes; larger limits are cut to this
OPERATORS = ("gte", "gt", "lte", "lt", "between", "to_list")
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[ T](\d{2}:\d{2}(?::\d{2})?)(?:\.\d+)?(?:Z|[+-]00:?00)?)?$")
_INT = re.compile(r"^-?\d+$")


def now_stamp() -> str:
    return datetime.now(UTC).strftime(TIMESTAMP_FORMAT)


class PulpoError(SandboxError):
    """An error answer in PULPO's shape; raised by the world, rendered by the app wrapper."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, str(body), JSONResponse(body, status_code=status))
        self.body = body


def invalid(*errors: Mapping[str, str] | tuple[str, str], status: int = 422) -> PulpoError:
    """ErrorsList `{"errors": [{"<field>": "<message>"}]}` (422 unless the spec says otherwise)."""
    items = [dict([e]) if isinstance(e, tuple) else dict(e) for e in errors]
    return PulpoError(status, {"errors": items})


def forbidden(field: str, message: str) -> PulpoError:
    return invalid((field, message), status=403)


def not_found(what: str) -> PulpoError:
    return PulpoError(404, {"errors": {"message": f"{what} not found"}})


# ---- value parsing -------------------------------------------------------------------------------


def canonical_date(text: str) -> tuple[str, bool] | None:
    """(`YYYY-MM-DDThh:mm:ss`, whether only a date was given) or None when unparseable."""
    match = _DATE.match(text.strip())
    if not match:
        return None
    day, clock = match.group(1), match.group(2)
    if clock is None:
        return f"{day}T00:00:00", True
    return f"{day}T{clock if len(clock) == 8 else clock + ':00'}", False


def _convert(kind: str, text: str) -> Any:
    text = text.strip()
    if kind == "int":
        if not _INT.match(text):
            raise ValueError(text)
        return int(text)
    if kind == "num":
        return float(text)
    if kind == "bool":
        if text.lower() not in {"true", "false"}:
            raise ValueError(text)
        return text.lower() == "true"
    if kind == "date":
        parsed = canonical_date(text)
        if parsed is None:
            raise ValueError(text)
        return parsed[0]
    return text


def _comparable(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "date" and isinstance(value, str):
        parsed = canonical_date(value)
        return parsed[0] if parsed else None
    return value


def predicate(name: str, raw: str, kind: str) -> Predicate:
    """Compile one filter value (with or without operator prefix) into a test on a record value."""
    head, sep, rest = raw.partition(":")
    op = head if sep and head in OPERATORS else "eq"
    text = rest if op != "eq" else raw
    try:
        if op == "between":
            low_text, _, high_text = text.partition(",")
            low, high = _convert(kind, low_text), _convert(kind, high_text)
            return lambda v: (c := _comparable(v, kind)) is not None and low <= c <= high
        if op == "to_list":
            options = {_convert(kind, part) for part in text.split(",") if part.strip()}
            return lambda v: _comparable(v, kind) in options
        if op == "eq" and kind == "date":
            parsed = canonical_date(text)
            if parsed is None:
                raise ValueError(text)
            stamp, date_only = parsed
            if date_only:
                return lambda v: (c := _comparable(v, kind)) is not None and c[:10] == stamp[:10]
            return lambda v: _comparable(v, kind) == stamp
        target = _convert(kind, text)
    except ValueError:
        raise invalid((name, "is invalid")) from None
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "eq": lambda a, b: a == b,
        "gte": lambda a, b: a >= b,
        "gt": lambda a, b: a > b,
        "lte": lambda a, b: a <= b,
        "lt": lambda a, b: a < b,
    }
    test = compare[op]
    return lambda v: (c := _comparable(v, kind)) is not None and test(c, target)


def any_of(predicates: list[Predicate]) -> Predicate:
    def check(value: Any) -> bool:
        values = value if isinstance(value, list) else [value]
        return any(p(v) for p in predicates for v in values)

    return check


FieldSpec = Mapping[str, tuple[str | Getter, str]]


def compile_filters(query: Query, fields: FieldSpec) -> list[tuple[Getter, Predicate]]:
    """Predicates for the query parameters named in `fields` (param -> (record key or getter, kind))."""
    compiled: list[tuple[Getter, Predicate]] = []
    for name, values in query.items():
        if name not in fields or not values:
            continue
        source, kind = fields[name]
        getter: Getter = source if callable(source) else (lambda r, key=source: r.get(key))
        compiled.append((getter, any_of([predicate(name, v, kind) for v in values])))
    return compiled


def select(records: Iterable[Record], query: Query, fields: FieldSpec) -> list[Record]:
    compiled = compile_filters(query, fields)
    if not compiled:
        return list(records)
    return [r for r in records if all(test(get(r)) for get, test in compiled)]


def int_list(query: Query, name: str, *, status: int = 422) -> list[int] | None:
    """All integer values of a list parameter (`id[]=1&id[]=2`, `id=1`, `id=to_list:1,2`)."""
    values = query.get(name)
    if not values:
        return None
    out: list[int] = []
    for value in values:
        text = value.removeprefix("to_list:")
        for part in text.split(","):
            if not _INT.match(part.strip()):
                raise invalid((name, "is invalid"), status=status)
            out.append(int(part))
    return out


def paging(query: Query, *, default_limit: int | None = DEFAULT_LIMIT) -> tuple[int | None, int]:
    """(limit, offset): limit defaults to 10 and is capped at 100; None means "everything"."""
    limit: int | None = default_limit
    offset = 0
    try:
        if query.get("limit"):
            limit = int(query["limit"][-1])
        if query.get("offset"):
            offset = max(0, int(query["offset"][-1]))
    except ValueError:
        raise invalid(("limit", "is invalid")) from None
    if limit is not None:
        limit = min(max(limit, 0), MAX_LIMIT) if limit > 0 else (default_limit or MAX_LIMIT)
    return limit, offset


def window(rows: list[Any], limit: int | None, offset: int) -> list[Any]:
    return rows[offset:] if limit is None else rows[offset : offset + limit]


def project(rows: list[Record], query: Query) -> list[Record]:
    """`view_attributes=id,order_num,state`: only those keys (empty: all)."""
    raw = ",".join(query.get("view_attributes", []))
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    if not keys:
        return rows
    return [{k: r.get(k) for k in keys} for r in rows]


# ---- body type checks (the spec's property types, as Ecto casts them from JSON) -------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "num": _is_num,
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "obj": lambda v: isinstance(v, dict),
    "str_list": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}


def type_errors(body: Mapping[str, Any], types: Mapping[str, str]) -> list[tuple[str, str]]:
    """`(field, "is invalid")` for every present, non-null field whose JSON type the spec rejects."""
    return [
        (key, "is invalid")
        for key, kind in types.items()
        if body.get(key) is not None and not TYPE_CHECKS[kind](body[key])
    ]


def blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == []
