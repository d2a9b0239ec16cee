"""Contract-test support: read the official Swagger 2.0 specs from the shared reference folder and
validate sandbox responses and client requests against them with jsonschema.

The specs are reference data and are never copied into the repo. They are found at
`$BPP_REFERENCE_DIR` or at `../shared/reference` beside the project root; when neither exists the
calling test is skipped with a reason that says so.

Nullability: Billbee's .NET spec marks nothing nullable yet the live API returns nulls for empty
fields (`"ErrorMessage": null`), so every typed schema here also admits null. Field names, types,
formats of numbers and required keys are still checked.
"""

from __future__ import annotations

import copy
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPEC_FILES = {
    "billbee": Path("billbee") / "billbee-api-swagger2.yaml",
    "pulpo": Path("pulpo") / "pulpo-wms-swagger-4.6.50.min.json",
}


def reference_dir() -> Path | None:
    candidates = [os.environ.get("BPP_REFERENCE_DIR"), str(PROJECT_ROOT.parent / "shared" / "reference")]
    for candidate in candidates:
        if candidate and (Path(candidate) / SPEC_FILES["billbee"]).exists():
            return Path(candidate)
    return None


@lru_cache(maxsize=2)
def _load(system: str) -> dict[str, Any] | None:
    root = reference_dir()
    if root is None:
        return None
    path = root / SPEC_FILES[system]
    text = path.read_text(encoding="utf-8")
    return yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)


def load_spec(system: str) -> dict[str, Any]:
    """The parsed spec of `system` ('billbee' or 'pulpo'), or skip the test with the reason."""
    spec = _load(system)
    if spec is None:
        pytest.skip("official API specs not found: set BPP_REFERENCE_DIR or provide ../shared/reference "
                    "(billbee/billbee-api-swagger2.yaml, pulpo/pulpo-wms-swagger-4.6.50.min.json)")
    return spec


def _paths(system: str) -> dict[str, Any]:
    return load_spec(system)["paths"]


def spec_path(system: str, path: str) -> str:
    """The spec's key for `path`, accepting it with or without the `/api/v1` prefix."""
    paths = _paths(system)
    for candidate in (path, "/api/v1" + path, path.removeprefix("/api/v1") or "/"):
        if candidate in paths:
            return candidate
    raise KeyError(f"{system} spec has no path {path}")


def operation(system: str, method: str, path: str) -> dict[str, Any]:
    item = _paths(system)[spec_path(system, path)]
    op = item.get(method.lower())
    if op is None:
        raise KeyError(f"{system} spec has no {method.upper()} {path}")
    return op


@lru_cache(maxsize=4)
def _templates(system: str) -> list[tuple[re.Pattern[str], str]]:
    compiled = []
    for template in _paths(system):
        pattern = re.escape(template)
        pattern = re.sub(r"\\\{[^}]+\\\}", r"[^/]+", pattern)
        compiled.append((re.compile(f"^{pattern}$"), template))
    # Literal segments beat parameters: prefer templates with fewer braces.
    compiled.sort(key=lambda pair: pair[1].count("{"))
    return compiled


def match_path(system: str, method: str, concrete_path: str) -> str | None:
    """The spec template that a concrete request path (e.g. /api/v1/orders/42/shipment) matches."""
    path = concrete_path.split("?", 1)[0]
    if system == "pulpo":
        path = path.removeprefix("/api/v1") or "/"
    for pattern, template in _templates(system):
        if pattern.match(path) and method.lower() in _paths(system)[template]:
            return template
    return None


def _nullable(schema: Any) -> Any:
    """Deep copy of a schema in which every typed node also admits null."""
    if isinstance(schema, dict):
        out = {k: _nullable(v) for k, v in schema.items()}
        node_type = out.get("type")
        if isinstance(node_type, str) and node_type != "null":
            out["type"] = [node_type, "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        return out
    if isinstance(schema, list):
        return [_nullable(v) for v in schema]
    return schema


@lru_cache(maxsize=2)
def _definitions(system: str) -> dict[str, Any]:
    return _nullable(copy.deepcopy(load_spec(system).get("definitions", {})))


def response_schema(system: str, method: str, path: str, status: int) -> dict[str, Any] | None:
    """The response schema of an operation and status (or `default`); None when the spec has none."""
    responses = operation(system, method, path).get("responses", {})
    response = responses.get(str(status)) or responses.get("default")
    if response is None:
        raise KeyError(f"{system} spec documents no {status} answer for {method.upper()} {path}")
    schema = response.get("schema")
    return None if schema is None else _nullable(copy.deepcopy(schema))


def request_body_schema(system: str, method: str, path: str) -> dict[str, Any] | None:
    for parameter in operation(system, method, path).get("parameters", []):
        if parameter.get("in") == "body":
            return _nullable(copy.deepcopy(parameter.get("schema", {})))
    return None


def query_parameters(system: str, method: str, path: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in operation(system, method, path).get("parameters", []) if p.get("in") == "query"}


def validation_errors(system: str, instance: Any, schema: dict[str, Any]) -> list[str]:
    """All schema violations of `instance`, as 'path: message' lines (empty when valid)."""
    root = dict(schema)
    root["definitions"] = _definitions(system)
    validator = Draft4Validator(root)
    errors: list[ValidationError] = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    return [f"{'/'.join(str(p) for p in e.path) or '<root>'}: {e.message[:300]}" for e in errors]


def validate(system: str, instance: Any, schema: dict[str, Any] | None) -> None:
    """Assert that `instance` satisfies `schema` (no-op for operations without a schema)."""
    if schema is None:
        return
    errors = validation_errors(system, instance, schema)
    assert not errors, "spec violations:\n" + "\n".join(errors[:20])
