"""Config fuzzing: a broken `integrations.yaml` always gives a clear `ConfigError`, never a traceback.

Every case starts from the valid `integrations.example.yaml` and breaks it, either in its data (keys deleted,
values replaced by wrong types, unknown keys, bad references) or in its raw text (truncated, tabs, unbalanced
quotes, binary bytes, wrong encoding). `load_config` must then succeed or raise `ConfigError` whose every line
is `file[:line]: [entry: ][field: ]message`; the CLI and the Dagster code location must show that same text.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billbee_pulpo_pipeline.config import ConfigError, IntegrationConfig, load_config
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG

# The env the config tests use: distinctive secrets, so a leak is found by a substring search.
SECRETS = ("pw-Zq8x!secret", "key-Kk3v9secret", "pulpo-Pw7secret")
ENV = {
    "BILLBEE_USERNAME": "shop@example.com",
    "BILLBEE_API_PASSWORD": SECRETS[0],
    "BILLBEE_API_KEY": SECRETS[1],
    "PULPO_USERNAME": "demo_api",
    "PULPO_PASSWORD": SECRETS[2],
}
EXAMPLE_TEXT = EXAMPLE_CONFIG.read_text(encoding="utf-8")
EXAMPLE_DATA: dict[str, Any] = yaml.safe_load(EXAMPLE_TEXT)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

Path_ = tuple[str | int, ...]

# --------------------------------------------------------------------------------------------------
# Strategies

CONTROL = st.text(st.characters(min_codepoint=0, max_codepoint=31), min_size=1, max_size=4)
NASTY_TEXT = st.one_of(
    st.just(""),
    st.just(" "),
    st.text(max_size=12),
    st.text(min_size=1, max_size=3).map(lambda s: s * 2000),  # very long strings
    st.sampled_from(["🐙📦", "Verkaufsaufträge 🚚", "\u202e\u0000", "ß" * 50, "null", "~", "yes", "0x1F"]),
    CONTROL,
    st.sampled_from(["${UNSET_FUZZ_VAR}", "${UNSET_A}${UNSET_B}", "x-${UNSET_FUZZ_VAR}", "${", "${1X}",
                     "${BILLBEE_USERNAME", "${}", "${A:-", "$${LITERAL}", "${PULPO_PASSWORD}", "${A:-${B}}"]),
    st.sampled_from(["http://api.example.com", "ftp://x", "https://user:pw@host", "https://", "http://[::1",
                     "https://[", "//host", "https://eu.pulpo.co/api/v1", "http://127.0.0.1:1"]),
    st.sampled_from(["Bezahlt", "Fantasie", "Gepackt", "Versendet", "0", "17", "99", "-1"]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 100),
    st.integers(min_value=-(2**70), max_value=2**70),  # huge ints
    st.floats(allow_nan=True, allow_infinity=True),
    NASTY_TEXT,
)
JUNK = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
UNKNOWN_KEYS = st.one_of(st.text(min_size=1, max_size=10), st.sampled_from(["setings", "intervall", "env_refs",
                                                                            "type ", "Name", "🐙", "a\tb"]))


def _paths(value: Any, path: Path_ = ()) -> list[Path_]:
    """Every key and list item below the root, parents first."""
    found: list[Path_] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append((*path, key))
        found += _paths(child, (*path, key))
    return found


EXAMPLE_PATHS = _paths(EXAMPLE_DATA)


def _parent(data: Any, path: Path_) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


def _mutate(data: dict[str, Any], path: Path_, operation: str, value: Any, key: str) -> None:
    parent = _parent(data, path)
    if operation == "delete":
        del parent[path[-1]]
    elif operation == "replace":
        parent[path[-1]] = value
    elif operation == "unknown_key":
        target = parent[path[-1]]
        if isinstance(target, dict):
            target[key] = value
        else:
            parent[path[-1]] = {key: value}
    elif operation == "duplicate":  # the entry (or value) appears twice: duplicate names, overlaps
        if isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
        else:
            parent[key] = copy.deepcopy(parent[path[-1]])


@st.composite
def broken_data(draw: st.DrawFn) -> dict[str, Any]:
    """The example's data with one to three mutations."""
    data = copy.deepcopy(EXAMPLE_DATA)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        operation = draw(st.sampled_from(["delete", "replace", "replace", "unknown_key", "duplicate"]))
        _mutate(data, path, operation, draw(JUNK), draw(UNKNOWN_KEYS))
    return data


# Values aimed at one field each: every one is invalid and must be reported at that field.
TARGETED: list[tuple[Path_, Any, str]] = [
    (("integrations", 0, "interval_minutes"), 0, "greater than or equal to 1"),
    (("integrations", 0, "interval_minutes"), 61, "less than or equal to 60"),
    (("integrations", 1, "interval_minutes"), 2**70, ""),
    (("integrations", 1, "interval_minutes"), 1.5, ""),
    (("integrations", 1, "interval_minutes"), "often", ""),
    (("integrations", 0, "type"), "teleport", "unknown type"),
    (("integrations", 0, "source"), "no-such-credential", "unknown credential"),
    (("integrations", 3, "target"), "🐙", "unknown credential"),
    (("integrations", 1, "import_states"), ["Fantasie"], ""),
    (("integrations", 2, "packed_state"), "Zauberhaft", ""),
    (("integrations", 2, "packed_state"), 99, ""),
    (("credentials", 0, "base_url"), "http://api.billbee.io/api/v1", "https"),
    (("credentials", 1, "base_url"), "ftp://eu.pulpo.co", "not an http(s) URL"),
    (("credentials", 0, "username"), "${UNSET_FUZZ_VAR}", "UNSET_FUZZ_VAR is not set"),
    (("credentials", 0, "username"), "${BILLBEE_USERNAME", "unclosed"),
    (("credentials", 1, "warehouse_id"), "${1X}", "invalid reference"),
    (("credentials", 0, "api_key"), "plain-text-key", "must reference an environment variable"),
    (("credentials", 1, "warehouse_id"), None, ""),
    (("credentials", 1, "warehouse_id"), [1, 2], ""),
    (("integrations", 1, "name"), "Produkte", "duplicate integration name"),
    (("credentials", 1, "name"), "billbee-shop", "duplicate credential name"),
    (("integrations", 0, "title_language"), "deutsch", ""),
    (("integrations", 1, "lookback_hours"), -1, ""),
    (("integrations", 0, "interval_minutes"), True, "must be a whole number, not true"),
    (("integrations", 3, "batch_size"), 50.0, "whole number"),
    (("integrations", 2, "packed_state"), False, "not a Billbee order state"),
    (("integrations", 2, "source"), "   ", "at least 1 character"),
    (("integrations", 2, "source"), "${PULPO_PASSWORD}", "uses the secret variable PULPO_PASSWORD"),
    (("integrations", 2, "name"), "x ${BILLBEE_API_KEY:-k}", "uses the secret variable BILLBEE_API_KEY"),
    (("integrations", 1, "name"), "${PULPO_PASSWORD_OLD}", "PULPO_PASSWORD_OLD is not set"),
    (("credentials", 1, "username"), "${PULPO_PASSWORD}", "uses the secret variable PULPO_PASSWORD"),
]


# --------------------------------------------------------------------------------------------------
# Helpers


def _write(tmp_path: Path, data: Any) -> Path:
    return _write_text(tmp_path, yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=10**6))


def _write_text(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "integrations.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _line_count(path: Path) -> int:
    """Lines as YAML counts them: NEL, LS and PS break lines too."""
    if not path.is_file():
        return 0
    text = path.read_bytes().decode("utf-8", errors="replace")
    return len(re.findall("\r\n|[\n\r\x85\u2028\u2029]", text)) + 1


def load_or_config_error(
    path: Path, env: dict[str, str] = ENV, *, require_env: bool = True
) -> ConfigError | IntegrationConfig:
    """load_config's outcome; any exception other than ConfigError fails the test (never a traceback)."""
    try:
        return load_config(path, env=env, require_env=require_env)
    except ConfigError as error:
        assert_clear(error, path)
        return error


def assert_clear(error: ConfigError, path: Path) -> None:
    """Every problem names the file, sits on a real line, is one printable line and leaks no secret."""
    text = str(error)
    assert error.problems and text.strip()
    lines = _line_count(path)
    for problem, printed in zip(error.problems, text.split("\n"), strict=True):
        assert problem.file == path
        assert printed == str(problem)
        assert printed.startswith(f"{path}:" if problem.line else str(path)), printed
        assert problem.line is None or 1 <= problem.line <= lines, (problem.line, lines)
        assert problem.message.strip(), printed
        assert printed.isprintable(), repr(printed)  # no control characters: one problem, one line
        assert len(printed) < 1500 + len(str(path)), "a problem line must stay readable"
    assert not any(secret in text for secret in SECRETS)


def _line_of_key(text: str, path: Path_) -> int:
    """The 1-based line of `path` in text dumped by `_write`: found by walking the YAML nodes."""
    node = yaml.compose(text)
    line = 0
    for part in path:
        if isinstance(part, int):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            key, node = next((k, v) for k, v in node.value if k.value == part)
            line = key.start_mark.line + 1
    return line


# --------------------------------------------------------------------------------------------------
# load_config


def test_example_loads_unchanged(tmp_path):
    config = load_config(_write(tmp_path, EXAMPLE_DATA), env=ENV)
    assert len(config.integrations) == 5 and len(config.credentials) == 2


@FUZZ
@given(data=broken_data(), unset=st.sets(st.sampled_from(sorted(ENV))), require_env=st.booleans())
def test_broken_data_is_a_config_error_or_a_valid_config(tmp_path, data, unset, require_env):
    """Also with variables unset and with require_env=False, the mode of the Dagster code location."""
    path = _write(tmp_path, data)
    env = {name: value for name, value in ENV.items() if name not in unset}
    outcome = load_or_config_error(path, env, require_env=require_env)
    if isinstance(outcome, ConfigError):
        assert any(problem.line for problem in outcome.problems) or not isinstance(data, dict) or any(
            section not in data or not isinstance(data[section], list) or not data[section]
            for section in ("credentials", "integrations")
        ), f"no problem is located: {outcome}"


@settings(max_examples=len(TARGETED) * 3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(TARGETED))
def test_a_bad_field_is_reported_at_its_file_line_entry_and_field(tmp_path, case):
    path_in_data, value, expected = case
    data = copy.deepcopy(EXAMPLE_DATA)
    _parent(data, path_in_data)[path_in_data[-1]] = value
    path = _write(tmp_path, data)
    outcome = load_or_config_error(path)
    assert isinstance(outcome, ConfigError), f"{path_in_data} = {value!r} was accepted"
    section, index, field_name = path_in_data
    located_at = (*path_in_data, 0) if field_name.endswith("_states") else path_in_data  # the bad state
    line = _line_of_key(path.read_text(encoding="utf-8"), located_at)
    matching = [p for p in outcome.problems
                if p.entry.startswith(f"{section}[{index}]") and p.field.startswith(field_name)]
    assert matching, str(outcome)
    assert matching[0].line == line
    assert expected in matching[0].message
    assert str(matching[0]).startswith(f"{path}:{line}: {section}[{index}]")


NUMBER_FIELDS = {"interval_minutes": (1, 1, 60), "lookback_hours": (1, 1, 720), "batch_size": (3, 1, 250),
                 "safety_buffer": (3, 0, 10**30), "warehouse_id": (None, 1, 10**30)}


@FUZZ
@given(field_name=st.sampled_from(sorted(NUMBER_FIELDS)),
       value=st.one_of(st.integers(-(2**64), 2**64), st.floats(), st.booleans(), st.sampled_from(["5", " 7 ", "1e3"])))
def test_numbers_outside_their_range_or_not_whole_are_refused(tmp_path, field_name, value):
    """Ranges hold, and true/false or 5.0 are never read as 1/0 or 5 (YAML `yes` is not a count)."""
    index, low, high = NUMBER_FIELDS[field_name]
    data = copy.deepcopy(EXAMPLE_DATA)
    (data["credentials"][1] if index is None else data["integrations"][index])[field_name] = value
    outcome = load_or_config_error(_write(tmp_path, data))
    whole = value if isinstance(value, int) and not isinstance(value, bool) else \
        int(value) if isinstance(value, str) and value.strip().isdigit() else None
    if whole is not None and low <= whole <= high:
        assert isinstance(outcome, IntegrationConfig), str(outcome)
        return
    assert isinstance(outcome, ConfigError), f"{field_name}={value!r} accepted"
    assert any(p.field == field_name for p in outcome.problems), str(outcome)


# ---- raw text


def _truncate(text: str, at: int) -> str:
    return text[: at % (len(text) + 1)]


def _tabs(text: str, at: int) -> str:
    lines = text.split("\n")
    index = at % len(lines)
    stripped = lines[index].lstrip(" ")
    lines[index] = "\t" * max(1, (len(lines[index]) - len(stripped)) // 2) + stripped
    return "\n".join(lines)


def _insert(text: str, at: int, what: str) -> str:
    at %= len(text) + 1
    return text[:at] + what + text[at:]


RAW_EDITS = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, len(EXAMPLE_TEXT)), st.just("")),
    st.tuples(st.just("tabs"), st.integers(0, 200), st.just("")),
    st.tuples(st.just("insert"), st.integers(0, len(EXAMPLE_TEXT)),
              st.sampled_from(['"', "'", "[", "]", "{", "}", ": ", "- ", "&a ", "*a", "!!python/object:os.system ",
                               "\x00", "\x07", "\ufeff", "%YAML 9.9\n", "---\n", "...\n", "${", "\t", "? "])),
    st.tuples(st.just("insert"), st.integers(0, len(EXAMPLE_TEXT)), st.text(max_size=5)),
)


@FUZZ
@given(edits=st.lists(RAW_EDITS, min_size=1, max_size=3))
def test_raw_text_mutations_are_a_config_error_or_a_valid_config(tmp_path, edits):
    text = EXAMPLE_TEXT
    for kind, at, what in edits:
        text = _truncate(text, at) if kind == "truncate" else _tabs(text, at) if kind == "tabs" else \
            _insert(text, at, what)
    load_or_config_error(_write_text(tmp_path, text))


@FUZZ
@given(garbage=st.binary(min_size=1, max_size=40), at=st.integers(0, len(EXAMPLE_TEXT)))
def test_binary_bytes_are_a_config_error_or_a_valid_config(tmp_path, garbage, at):
    raw = EXAMPLE_TEXT.encode("utf-8")
    at %= len(raw) + 1
    load_or_config_error(_write_text(tmp_path, raw[:at] + garbage + raw[at:]))


WHOLE_FILE_CASES = {
    "empty": b"",
    "only_comments": b"# nothing here\n",
    "only_document_marker": b"---\n",
    "a_list": b"- credentials\n- integrations\n",
    "a_scalar": b"credentials\n",
    "a_number": b"42\n",
    "null": b"~\n",
    "latin1": EXAMPLE_TEXT.encode("latin-1", errors="replace"),
    "utf16": EXAMPLE_TEXT.encode("utf-16"),
    "two_documents": (EXAMPLE_TEXT + "\n---\n" + EXAMPLE_TEXT).encode("utf-8"),
    "sections_null": b"credentials:\nintegrations:\n",
    "sections_scalars": b"credentials: 1\nintegrations: yes\n",
    "entries_are_scalars": b"credentials: [a, 1, ~]\nintegrations: [[], {}]\n",
    "non_string_keys": b"credentials: []\nintegrations: []\n1: x\n? [a]\n: y\nnull: z\n",
    "python_tag": b"!!python/object/apply:os.system ['true']\n",
    "billion_laughs": b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                      b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                      b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                      b"credentials: [*f]\nintegrations: []\n",
    "recursive_alias": b"credentials: &x [*x]\nintegrations: []\n",
    "deep_nesting": b"credentials: " + b"[" * 5000 + b"]" * 5000 + b"\nintegrations: []\n",
}


@pytest.mark.parametrize("name", sorted(WHOLE_FILE_CASES))
def test_whole_file_breakage_is_a_config_error(tmp_path, name):
    path = _write_text(tmp_path, WHOLE_FILE_CASES[name])
    outcome = load_or_config_error(path)
    assert isinstance(outcome, ConfigError), f"{name} was accepted"


def test_a_secret_variable_in_a_plain_field_is_refused_and_never_expanded_in_messages(tmp_path):
    """`name: ${PULPO_PASSWORD}` would make the password a Dagster group name; a variable a secret field
    uses (whatever it is called) is refused elsewhere, and a secret that still reaches a message is shown
    as its reference."""
    data = copy.deepcopy(EXAMPLE_DATA)
    data["credentials"][1]["password"] = "${WAREHOUSE_LOGIN}"
    data["integrations"][2]["name"] = "${WAREHOUSE_LOGIN}"
    env = {**ENV, "WAREHOUSE_LOGIN": "hunter2-not-in-messages"}
    outcome = load_or_config_error(_write(tmp_path, data), env)
    assert isinstance(outcome, ConfigError)
    assert [(p.entry, p.field) for p in outcome.problems] == [('integrations[2] "${WAREHOUSE_LOGIN}"', "name")]
    assert "uses the secret variable WAREHOUSE_LOGIN" in outcome.problems[0].message
    assert "hunter2" not in str(outcome)


def test_a_secret_looking_variable_is_shown_as_its_reference_in_messages(tmp_path):
    """Not used by a secret field, so not refused, but its name says secret: the message never expands it."""
    data = copy.deepcopy(EXAMPLE_DATA)
    data["integrations"][2]["source"] = "${OLD_PULPO_PASSWORD}"
    outcome = load_or_config_error(_write(tmp_path, data), {**ENV, "OLD_PULPO_PASSWORD": "old-secret-123"})
    assert isinstance(outcome, ConfigError)
    assert "unknown credential '${OLD_PULPO_PASSWORD}'" in str(outcome)
    assert "old-secret-123" not in str(outcome)


def test_empty_sections_are_a_valid_config_that_does_nothing(tmp_path):
    outcome = load_or_config_error(_write_text(tmp_path, b"credentials: []\nintegrations: []\n"))
    assert isinstance(outcome, IntegrationConfig) and outcome.integrations == []


def test_a_control_character_is_located_without_quoting_the_line(tmp_path):
    text = EXAMPLE_TEXT.replace("warehouse_id: 1", "warehouse_id: 1\x07")
    path = _write_text(tmp_path, text)
    outcome = load_or_config_error(path)
    assert isinstance(outcome, ConfigError)
    line = text[: text.index("\x07")].count("\n") + 1
    assert str(outcome) == f"{path}:{line}: invalid YAML: character '\\x07' is not allowed (column 20); " \
        "control characters and binary data cannot appear in the file"


def test_a_file_not_in_utf8_names_the_line_of_the_first_bad_byte(tmp_path):
    path = _write_text(tmp_path, EXAMPLE_TEXT.encode("latin-1", errors="replace"))
    outcome = load_or_config_error(path)
    assert isinstance(outcome, ConfigError)
    line = EXAMPLE_TEXT[: EXAMPLE_TEXT.index("ä")].count("\n") + 1
    column = EXAMPLE_TEXT.split("\n")[line - 1].index("ä") + 1
    assert str(outcome) == f"{path}:{line}: not UTF-8 text (byte 0xe4, column {column}): save the file as UTF-8"


def test_a_directory_instead_of_a_file_is_a_config_error(tmp_path):
    outcome = load_or_config_error(tmp_path)
    assert isinstance(outcome, ConfigError)


# --------------------------------------------------------------------------------------------------
# CLI and the Dagster code location (subprocesses: a few cases only)

CLI_CASES = {
    "empty": b"",
    "a_list": b"- a\n- b\n",
    "latin1": EXAMPLE_TEXT.encode("latin-1", errors="replace"),
    "bad_state": EXAMPLE_TEXT.replace("packed_state: Gepackt", "packed_state: Zauberhaft").encode(),
    "truncated": EXAMPLE_TEXT[: EXAMPLE_TEXT.index("import_states") + 20].encode() + b'"',
    "control_key": EXAMPLE_TEXT.replace("    packed_state:", '    "pa\\u0007cked\\nstate":').encode(),
}


def _subprocess_env(config: Path, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **ENV, "BPP_CONFIG": str(config), "BPP_HOME": str(tmp_path / "home"),
            "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_check_reports_a_broken_config_in_one_paragraph(tmp_path, name):
    path = _write_text(tmp_path, CLI_CASES[name])
    expected = str(load_or_config_error(path))
    result = subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "check", "--config", str(path)],
                            env=_subprocess_env(path, tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert expected in result.stderr
    paragraph = result.stderr.strip()
    assert paragraph.startswith("configuration error:") and "\n\n" not in paragraph, paragraph
    assert result.stdout == ""


DAGSTER_PROBE = """
import sys, traceback
try:
    import billbee_pulpo_pipeline.definitions
except BaseException as exc:
    frames = traceback.extract_tb(exc.__traceback__)
    print(type(exc).__name__)
    print(len([f for f in frames if "billbee_pulpo_pipeline" in f.filename]))
    print("config/loader.py" in "".join(traceback.format_exception(exc)))
    print(str(exc))
    sys.exit(0)
print("loaded")
"""


@pytest.mark.parametrize("name", ["bad_state", "latin1"])
def test_dagster_code_location_fails_with_the_config_error_text(tmp_path, name):
    """A broken file stops the code location with the ConfigError text and a shallow traceback: the UI shows
    the problems, not a stack through our loader."""
    path = _write_text(tmp_path, CLI_CASES[name])
    expected = str(load_or_config_error(path))
    result = subprocess.run([sys.executable, "-c", DAGSTER_PROBE], env=_subprocess_env(path, tmp_path),
                            capture_output=True, text=True, timeout=120)
    kind, our_frames, shows_loader, message = result.stdout.split("\n", 3)
    assert kind == "ConfigError", result.stdout + result.stderr
    assert int(our_frames) == 1, "only the definitions module itself, not the loader's internals"
    assert shows_loader == "False", "no chained traceback through the loader either"
    assert expected in message


def test_dagster_definitions_validate_shows_the_config_error(tmp_path):
    """What `dagster dev` shows for a code location that fails to load: the ConfigError's problems."""
    path = _write_text(tmp_path, CLI_CASES["bad_state"])
    expected = str(load_or_config_error(path))
    dagster = Path(sys.executable).with_name("dagster")
    (tmp_path / "dagster_home").mkdir()
    env = {**_subprocess_env(path, tmp_path), "DAGSTER_HOME": str(tmp_path / "dagster_home"), "NO_COLOR": "1"}
    result = subprocess.run([str(dagster), "definitions", "validate", "-m", "billbee_pulpo_pipeline.definitions",
                             "-d", str(EXAMPLE_CONFIG.parent)],
                            env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert expected in output, output
    assert "config/loader.py" not in output, "the loader's internals are not part of the message"
