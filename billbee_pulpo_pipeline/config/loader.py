"""Read `integrations.yaml`: YAML with line numbers, `${VAR}` interpolation, the secrets policy, validation.

Every problem becomes one self-contained line, `file:line: entry: field: message`, and all problems of a
file are reported together, so a merchant fixes the file in one pass. Messages never contain secret
values: secrets must be `${VAR}` references (checked before anything else touches them), YAML errors
are reported without the offending source line, and pydantic errors without their input.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from billbee_pulpo_pipeline.config.models import (
    ALERT_SECRET_FIELDS,
    CREDENTIAL_CLASSES,
    CREDENTIAL_TYPES,
    DEFERRABLE_FIELDS,
    INTEGRATION_CLASSES,
    INTEGRATION_TYPES,
    SECRET_FIELDS,
    AlertsConfig,
    AnyCredential,
    AnyIntegration,
    EntryRef,
    FieldError,
    IntegrationConfig,
    cross_check,
    shipping_methods_of,
    slugify,
)

CONFIG_ENV = "BPP_CONFIG"
DEFAULT_CONFIG_FILE = "integrations.yaml"
SECTIONS = ("credentials", "integrations")
OPTIONAL_SECTIONS = ("alerts",)

# The names PULPO's integration form and the setup guide use, besides the canonical types.
INTEGRATION_TYPE_ALIASES: dict[str, str] = {
    "produkte": "products",
    "verkaufsauftraege": "sales_orders",
    "statusupdates": "status_updates",
    "lagerbestand": "stock",
    "versandetiketten": "shipping_labels",
    "versandlabel_generieren": "shipping_labels",
    "erzeuge_sendungen": "shipments",
    "sendungen_erzeugen": "shipments",
}
CREDENTIAL_TYPE_ALIASES: dict[str, str] = {"pulpo_wms": "pulpo", "pulpo_wms_api": "pulpo"}

_SECRET_KEYS = frozenset(key for fields in SECRET_FIELDS.values() for key in fields)
_REFERENCE = re.compile(r"\$(?:(\$)|\{([^{}]*)\}|(\{))")
_INNER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_WHOLE_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY", re.IGNORECASE)

_CREDENTIAL_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyCredential)
_INTEGRATION_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyIntegration)
_ALERTS_ADAPTER: TypeAdapter[Any] = TypeAdapter(AlertsConfig)

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One problem in a configuration file, located by line, entry and field."""

    file: Path
    line: int | None
    entry: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        parts = [part for part in (self.entry, self.field) if part]
        return ": ".join([_printable(where, limit=10_000), *(_printable(part) for part in [*parts, self.message])])


class ConfigError(Exception):
    """The configuration file is unusable; `str()` has one line per problem, `.problems` the details."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path = path
        self.problems = sorted(problems, key=lambda problem: problem.line or 0)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def resolve_config_path(explicit: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The config file: the explicit path (`--config`), else $BPP_CONFIG, else ./integrations.yaml."""
    env = os.environ if env is None else env
    return Path(explicit or env.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE).expanduser()


def load_config(
    path: str | Path | None = None, env: Mapping[str, str] | None = None, *, require_env: bool = True
) -> IntegrationConfig:
    """Read and validate the configuration file; `ConfigError` lists every problem.

    `env` (default `os.environ`) supplies `${VAR}` values. With `require_env=False`, unset variables are
    tolerated in the credentials' connection fields (base_url, username and the secrets, which become
    None): for tooling that needs only the structure, and for the Dagster code location, which resolves
    them in the run worker through `Credential.env_refs`.
    """
    env = os.environ if env is None else env
    file = resolve_config_path(path, env)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        message = f"configuration file not found (pass --config, set {CONFIG_ENV}, or copy " \
            "integrations.example.yaml)"
        raise ConfigError(file, [Problem(file, None, "", "", message)]) from None
    except UnicodeDecodeError as exc:  # e.g. saved as Latin-1 or UTF-16 by an editor
        line = exc.object[: exc.start].count(b"\n") + 1
        column = len(exc.object[exc.object.rfind(b"\n", 0, exc.start) + 1: exc.start].decode("utf-8", "replace")) + 1
        message = f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x}, column {column}): save the file as UTF-8"
        raise ConfigError(file, [Problem(file, line, "", "", message)]) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(file, [Problem(file, None, "", "", f"cannot read the file: {reason}")]) from None
    return parse_config(text, file, env, require_env=require_env)


def parse_config(
    text: str, source_path: str | Path, env: Mapping[str, str] | None = None, *, require_env: bool = True
) -> IntegrationConfig:
    """Validate configuration text as if read from `source_path` (which only names it in messages)."""
    reader = _Reader(Path(source_path), os.environ if env is None else env, require_env)
    return reader.read(text)


def interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand `${VAR}` and `${VAR:-default}` (default when unset or empty); `$$` is a literal `$`.

    Returns the text and the names of unset variables without a default. `ValueError` for a malformed
    reference such as `${1X}` or an unclosed `${`.
    """
    missing: list[str] = []

    def expand(match: re.Match[str]) -> str:
        escaped, inner, unclosed = match.groups()
        if escaped:
            return "$"
        if unclosed is not None:
            raise ValueError("unclosed '${': use ${NAME} or ${NAME:-default} (write $$ for a literal $)")
        parts = _INNER.fullmatch(inner)
        if parts is None:
            raise ValueError(f"invalid reference '${{{inner}}}': use ${{NAME}} or ${{NAME:-default}} "
                             "(write $$ for a literal $)")
        name, default = parts.groups()
        if default is not None:
            return env.get(name) or default
        if name not in env:
            missing.append(name)
            return ""
        return env[name]

    return _REFERENCE.sub(expand, text), missing


def _whole_reference(value: Any) -> str | None:
    """The variable name when the value is exactly `${NAME}` (no default, nothing around it)."""
    match = _WHOLE_REFERENCE.fullmatch(value) if isinstance(value, str) else None
    return match.group(1) if match else None


def _normalise_type(value: Any, canonical: tuple[str, ...], aliases: dict[str, str]) -> Any:
    if not isinstance(value, str):
        return value
    key = slugify(value)
    if key in canonical:
        return key
    return aliases.get(key, aliases.get(key.replace("_", ""), value))


def _format_field(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# --------------------------------------------------------------------------------------------------


@dataclass
class _Reader:
    file: Path
    env: Mapping[str, str]
    require_env: bool
    problems: list[Problem] = field(default_factory=list)
    lines: dict[Path_, int] = field(default_factory=dict)
    names: dict[Path_, str] = field(default_factory=dict)
    failed: set[Path_] = field(default_factory=set)  # paths already reported: later errors there are noise
    secret_vars: set[str] = field(default_factory=set)  # variables the secret fields reference
    budget: int = 200_000  # values visited; YAML aliases can make a small file expand exponentially

    def read(self, text: str) -> IntegrationConfig:
        data = self._parse_yaml(text)
        sections = self._sections(data)
        self.secret_vars = _secret_references(sections.get("credentials")) | _alert_secret_references(
            sections.get("alerts"))
        credentials, credential_refs = self._entries(
            "credentials", sections.get("credentials"), self._credential
        )
        integrations, integration_refs = self._entries(
            "integrations", sections.get("integrations"), self._integration
        )
        alerts = self._alerts(sections.get("alerts"))
        for section, index, field_name, message in cross_check(credential_refs, integration_refs):
            self.add((section, index, field_name), message)
        if self.problems:
            raise ConfigError(self.file, self._redacted())
        try:
            return IntegrationConfig(
                credentials=credentials, integrations=integrations, alerts=alerts, source_path=self.file
            )
        except ValidationError as exc:  # defensive: the checks above should have caught everything
            self._add_validation_errors((), exc, {})
            raise ConfigError(self.file, self._redacted()) from None

    def _redacted(self) -> list[Problem]:
        """The problems with secret values shown as their `${VAR}` reference.

        A secret variable may be referenced from a non-secret field too (`source: ${PULPO_PASSWORD}`), and
        that field's message would quote the expanded value. Secret variables: those the secret fields
        reference and any whose name says so (values of 6 characters or more: a short flag such as
        SOME_TOKEN=1 would otherwise garble every message)."""
        values = {value: name for name, value in self.env.items() if value and (
            name in self.secret_vars or (_SECRET_NAME.search(name) and len(value) >= 6))}
        if not values:
            return self.problems

        def clean(text: str) -> str:
            for value in sorted(values, key=len, reverse=True):
                text = text.replace(value, f"${{{values[value]}}}")
            return text

        return [Problem(p.file, p.line, clean(p.entry), clean(p.field), clean(p.message)) for p in self.problems]

    # ---- reporting

    def add(self, path: Path_, message: str) -> None:
        self.failed.add(path)
        line = next((self.lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in self.lines), None)
        entry, rest = "", path
        if path and path[0] in (*SECTIONS, *OPTIONAL_SECTIONS):
            if len(path) >= 2 and isinstance(path[1], int):
                name = self.names.get(path[:2])
                entry = f'{path[0]}[{path[1]}]' + (f' "{name}"' if name else "")
                rest = path[2:]
            else:
                entry, rest = str(path[0]), path[1:]
        self.problems.append(Problem(self.file, line, entry, _format_field(rest), message))

    def _is_reported(self, path: Path_) -> bool:
        return any(path[:n] in self.failed for n in range(len(path), 0, -1))

    # ---- YAML

    def _parse_yaml(self, text: str) -> Any:
        try:
            loader = yaml.SafeLoader(text)
        except yaml.reader.ReaderError as exc:  # a control character: PyYAML refuses the text up front
            raise self._unreadable(text, exc) from None
        try:
            node = loader.get_single_node()
            if node is None:
                raise self._fatal("the file is empty; see integrations.example.yaml")
            duplicates = self._index(node, ())
            data = loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            # str(exc) quotes the source line, which may hold a secret: report only the problem and place.
            mark = exc.problem_mark or exc.context_mark
            message = f"invalid YAML: {exc.problem or exc.context}"
            if mark is not None:
                message += f" (column {mark.column + 1})"
            if exc.problem and exc.context:
                started = f" started on line {exc.context_mark.line + 1}" if exc.context_mark else ""
                message += f", {exc.context}{started}"
            line = mark.line + 1 if mark else None
            raise ConfigError(self.file, [Problem(self.file, line, "", "", message)]) from None
        except yaml.reader.ReaderError as exc:
            raise self._unreadable(text, exc) from None
        except yaml.YAMLError as exc:
            raise self._fatal(f"invalid YAML ({type(exc).__name__})") from None
        except RecursionError:
            raise self._fatal("invalid YAML: brackets or indentation nested too deeply") from None
        finally:
            loader.dispose()
        self._remember_names(data)
        for path in duplicates:
            self.add(path, f"duplicate key '{path[-1]}' (YAML would silently keep only the last one)")
        return data

    def _unreadable(self, text: str, exc: yaml.reader.ReaderError) -> ConfigError:
        """A character YAML does not allow (control characters, NUL): where it is, never the text around it."""
        position = exc.position if isinstance(exc.position, int) else 0
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        character = chr(exc.character) if isinstance(exc.character, int) else exc.character
        message = (f"invalid YAML: character {character!r} is not allowed (column {column}); "
                   "control characters and binary data cannot appear in the file")
        return ConfigError(self.file, [Problem(self.file, line, "", "", message)])

    def _index(self, node: yaml.Node, path: Path_, active: frozenset[int] = frozenset()) -> list[Path_]:
        """Record the line of every key and item; return the paths of duplicate keys."""
        if id(node) in active:  # recursive alias
            return []
        self._spend()
        active = active | {id(node)}
        duplicates: list[Path_] = []
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                child = (*path, key_node.value)
                if key_node.value in seen:
                    duplicates.append(child)
                seen.add(key_node.value)
                self.lines.setdefault(child, key_node.start_mark.line + 1)
                duplicates += self._index(value_node, child, active)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, index)
                self.lines.setdefault(child, item.start_mark.line + 1)
                duplicates += self._index(item, child, active)
        return duplicates

    def _remember_names(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        for section in SECTIONS:
            entries = data.get(section)
            for index, entry in enumerate(entries if isinstance(entries, list) else []):
                name = entry.get("name") if isinstance(entry, dict) else None
                if isinstance(name, str) and name.strip():
                    self.names[(section, index)] = name.strip()

    def _spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise self._fatal("the file expands to too many values (YAML aliases repeated too often?)")

    def _fatal(self, message: str) -> ConfigError:
        return ConfigError(self.file, [Problem(self.file, None, "", "", message)])

    # ---- structure

    def _sections(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self._fatal("the file must be a mapping with the keys 'credentials' and 'integrations'")
        for key in data:
            if key not in SECTIONS and key not in OPTIONAL_SECTIONS:
                allowed = (*SECTIONS, *OPTIONAL_SECTIONS)
                self.add((str(key),), f"unknown key{_suggestion(str(key), allowed)} (allowed: {', '.join(allowed)})")
        for section in SECTIONS:
            if section not in data:
                self.add((section,), "missing (required): a list of entries")
            elif not isinstance(data[section], list):
                self.add((section,), "must be a list of entries (each starting with '- ')")
        return data

    def _entries(self, section: str, raw: Any, read_one: Any) -> tuple[list[Any], list[EntryRef]]:
        models: list[Any] = []
        refs: list[EntryRef] = []
        for index, entry in enumerate(raw if isinstance(raw, list) else []):
            path = (section, index)
            if not isinstance(entry, dict):
                self.add(path, "must be a mapping of keys (name, type, ...)")
                continue
            model, resolved = read_one(path, entry)
            if model is not None:
                models.append(model)
            refs.append(EntryRef(
                index=index,
                name=_text(resolved.get("name")),
                type=_text(resolved.get("type")),
                source=_text(resolved.get("source")),
                target=_text(resolved.get("target")),
                shipping_methods=shipping_methods_of(getattr(model, "settings", None)),
                settings_valid=model is not None,
            ))
        return models, refs

    # ---- entries

    def _credential(self, path: Path_, raw: dict[str, Any]) -> tuple[BaseModel | None, dict[str, Any]]:
        kind = _normalise_type(raw.get("type"), CREDENTIAL_TYPES, CREDENTIAL_TYPE_ALIASES)
        known = CREDENTIAL_CLASSES.get(_hashable(kind))
        allowed = [key for key in known.model_fields if key != "env_refs"] if known else []
        resolved: dict[str, Any] = {}
        env_refs: dict[str, str] = {}
        for key, value in raw.items():
            child = (*path, key)
            if key == "env_refs":
                self.add(child, "unknown key (env_refs is derived from the ${VAR} references)")
                continue
            if allowed and key not in allowed:
                resolved[key] = value  # reported as an unknown key, not for its ${VAR}
                continue
            if key in _SECRET_KEYS and _whole_reference(value) is None:
                self.add(child, _secret_policy_message(kind, key, value))
                continue
            deferrable = key in DEFERRABLE_FIELDS and not self.require_env
            present, result = self._resolve(value, child, deferrable)
            if not present:
                continue
            if key in _SECRET_KEYS and result == "":
                self.add(child, f"environment variable {_whole_reference(value)} is set but empty")
                continue
            if _whole_reference(value) and key in DEFERRABLE_FIELDS:
                env_refs[key] = str(_whole_reference(value))
            resolved[key] = result
        if "type" in raw:
            resolved["type"] = kind
        resolved["env_refs"] = env_refs
        model = self._validate(path, resolved, _CREDENTIAL_ADAPTER, allowed, CREDENTIAL_TYPES)
        return model, resolved

    def _integration(self, path: Path_, raw: dict[str, Any]) -> tuple[BaseModel | None, dict[str, Any]]:
        kind = _normalise_type(raw.get("type"), INTEGRATION_TYPES, INTEGRATION_TYPE_ALIASES)
        known = INTEGRATION_CLASSES.get(_hashable(kind))
        allowed = known.allowed_keys() if known else []
        resolved: dict[str, Any] = {}
        for key, value in raw.items():
            if allowed and key not in allowed:
                resolved[key] = value  # reported as an unknown key, not for its ${VAR}
                continue
            present, result = self._resolve(value, (*path, key), deferrable=False)
            if present:
                resolved[key] = result
        if "type" in raw:
            resolved["type"] = kind
        model = self._validate(path, resolved, _INTEGRATION_ADAPTER, allowed, INTEGRATION_TYPES)
        return model, resolved

    def _alerts(self, raw: Any) -> AlertsConfig | None:
        """The optional `alerts` section. Its secrets follow the credentials' rules: `${VAR}` only, and left
        to the sensor (as dagster.EnvVar) when the code location loads without them."""
        if raw is None:
            return None
        if not isinstance(raw, dict):
            self.add(("alerts",), "must be a mapping (slack_webhook_url, or slack_token and slack_channel, "
                     "dagster_url)")
            return None
        resolved: dict[str, Any] = {}
        env_refs: dict[str, str] = {}
        for key, value in raw.items():
            path = ("alerts", key)
            if key == "env_refs":
                self.add(path, "unknown key (env_refs is derived from the ${VAR} references)")
                continue
            secret = key in ALERT_SECRET_FIELDS
            if secret and _whole_reference(value) is None:
                shape = " exactly, without a default or other text" if isinstance(value, str) and "${" in value else ""
                self.add(path, f"must reference an environment variable, e.g. ${{{ALERT_SECRET_FIELDS[key]}}}{shape}; "
                         "secrets are not stored in config files")
                continue
            present, result = self._resolve(value, path, deferrable=secret and not self.require_env)
            if not present:
                continue
            if secret and result == "":
                self.add(path, f"environment variable {_whole_reference(value)} is set but empty")
                continue
            if secret:
                env_refs[key] = str(_whole_reference(value))
            resolved[key] = result
        resolved["env_refs"] = env_refs
        allowed = [key for key in AlertsConfig.model_fields if key != "env_refs"]
        return self._validate(("alerts",), resolved, _ALERTS_ADAPTER, allowed, ())  # type: ignore[return-value]

    def _resolve(self, value: Any, path: Path_, deferrable: bool) -> tuple[bool, Any]:
        """Interpolate a value tree. (False, None) when a variable is unset; a deferrable field is then
        kept as None, any other field is reported."""
        missing: list[tuple[Path_, list[str]]] = []
        reported = len(self.problems)
        result = self._walk(value, path, missing)
        if len(self.problems) > reported or self._is_reported(path):
            return False, None
        if missing:
            if deferrable:
                return True, None
            for where, names in missing:
                listed = ", ".join(names)
                self.add(where, f"environment variable{'s' if len(names) > 1 else ''} {listed} "
                         f"{'are' if len(names) > 1 else 'is'} not set")
            return False, None
        return True, result

    def _walk(
        self,
        value: Any,
        path: Path_,
        missing: list[tuple[Path_, list[str]]],
        active: frozenset[int] = frozenset(),
    ) -> Any:
        self._spend()
        if isinstance(value, dict | list):
            if id(value) in active:
                self.add(path, "a YAML alias refers to itself; write the value out")
                return None
            active = active | {id(value)}
        if isinstance(value, str):
            leaked = self._secrets_outside_secret_fields(value, path)
            if leaked:
                self.add(path, f"uses the secret variable{'s' if len(leaked) > 1 else ''} {', '.join(leaked)}: "
                         "secrets may only be referenced by api_password, api_key and password")
                return None
            try:
                text, names = interpolate(value, self.env)
            except ValueError as exc:
                self.add(path, str(exc))
                return None
            if names:
                missing.append((path, names))
            return text
        if isinstance(value, dict):
            return {key: self._walk(item, (*path, key), missing, active) for key, item in value.items()}
        if isinstance(value, list):
            return [self._walk(item, (*path, index), missing, active) for index, item in enumerate(value)]
        return value

    def _secrets_outside_secret_fields(self, value: str, path: Path_) -> list[str]:
        """Secret variables referenced by a field that is not a secret one: its value would show up in
        names, Dagster groups and messages."""
        if len(path) == 3 and path[0] == "credentials" and path[2] in _SECRET_KEYS:
            return []
        if len(path) == 2 and path[0] == "alerts" and path[1] in ALERT_SECRET_FIELDS:
            return []
        names = [match.group(2).split(":-")[0] for match in _REFERENCE.finditer(value) if match.group(2)]
        return sorted({name for name in names if name in self.secret_vars})

    def _validate(
        self, path: Path_, data: dict[str, Any], adapter: TypeAdapter[Any], allowed: list[str],
        types: tuple[str, ...],
    ) -> BaseModel | None:
        try:
            return adapter.validate_python(data)
        except ValidationError as exc:
            given = data.get("type")
            self._add_validation_errors(path, exc, {"allowed": allowed, "types": types, "given": given})
            return None

    def _add_validation_errors(self, path: Path_, exc: ValidationError, hints: dict[str, Any]) -> None:
        types: tuple[str, ...] = hints.get("types", ())
        for error in exc.errors(include_url=False, include_input=False):
            loc = list(error["loc"])
            kind = error["type"]
            if kind in {"union_tag_invalid", "union_tag_not_found"}:
                given = hints.get("given")
                message = (f"unknown type {given!r}" if kind == "union_tag_invalid" else "missing (required)")
                self._add_once((*path, "type"), f"{message} (allowed: {', '.join(types)})")
                continue
            if loc and loc[0] in types:
                loc.pop(0)  # the union tag
            if loc and loc[0] == "settings":
                loc.pop(0)  # settings are written flat in YAML
            cause = (error.get("ctx") or {}).get("error")
            if isinstance(cause, FieldError):
                loc.append(cause.field)
                message = cause.message
            elif kind == "missing":
                message = "missing (required)"
            elif kind == "extra_forbidden":
                allowed = hints.get("allowed", []) if len(loc) == 1 else []
                listed = f" (allowed: {', '.join(allowed)})" if allowed else ""
                message = f"unknown key{_suggestion(str(loc[-1]), allowed)}{listed}"
            elif kind in {"value_error", "assertion_error"}:
                message = str(cause) if cause is not None else error["msg"]
            else:
                message = error["msg"]
            self._add_once((*path, *loc), message)

    def _add_once(self, path: Path_, message: str) -> None:
        if not self._is_reported(path):
            self.add(path, message)


def _secret_references(credentials: Any) -> set[str]:
    """The variables the credentials' secret fields reference."""
    entries = credentials if isinstance(credentials, list) else []
    return {str(_whole_reference(entry[key])) for entry in entries if isinstance(entry, dict)
            for key in _SECRET_KEYS if _whole_reference(entry.get(key))}


def _alert_secret_references(alerts: Any) -> set[str]:
    """The variables the alerts' secret fields reference."""
    if not isinstance(alerts, dict):
        return set()
    return {str(_whole_reference(alerts[key])) for key in ALERT_SECRET_FIELDS if _whole_reference(alerts.get(key))}


def _secret_policy_message(kind: Any, key: str, value: Any) -> str:
    """Why a secret field is refused, without ever repeating its value."""
    example = SECRET_FIELDS.get(_hashable(kind), {}).get(key) or next(
        fields[key] for fields in SECRET_FIELDS.values() if key in fields
    )
    shape = " exactly, without a default or other text" if isinstance(value, str) and "${" in value else ""
    return (f"must reference an environment variable, e.g. ${{{example}}}{shape}; "
            "secrets are not stored in config files")


def _printable(text: str, limit: int = 400) -> str:
    """Control characters from keys or values escaped and very long text shortened, so each problem
    stays one readable line."""
    if not text.isprintable():
        text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text if len(text) <= limit else f"{text[:limit - 100]}…{text[-99:]}"


def _hashable(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _suggestion(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""
