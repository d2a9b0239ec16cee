"""The integration config: loading, interpolation, secrets policy, validation messages, defaults."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from billbee_pulpo_pipeline.clients.billbee.states import DEFAULT_RESERVING_STATES
from billbee_pulpo_pipeline.config import (
    DEFAULT_INTERVAL_MINUTES,
    BillbeeCredential,
    ConfigError,
    IntegrationConfig,
    PulpoCredential,
    SalesOrdersSettings,
    interpolate,
    load_config,
    parse_config,
    resolve_config_path,
    slugify,
)
from billbee_pulpo_pipeline.sandboxes.credentials import sandbox_env

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = PROJECT_ROOT / "integrations.example.yaml"

# Distinctive values, so a leak is found by a plain substring search.
SECRET_PASSWORD = "pw-Zq8x!secret"
SECRET_KEY = "key-Kk3v9secret"
SECRET_PULPO = "pulpo-Pw7secret"
ENV = {
    "BILLBEE_USERNAME": "shop@example.com",
    "BILLBEE_API_PASSWORD": SECRET_PASSWORD,
    "BILLBEE_API_KEY": SECRET_KEY,
    "PULPO_USERNAME": "demo_api",
    "PULPO_PASSWORD": SECRET_PULPO,
}
SECRETS = (SECRET_PASSWORD, SECRET_KEY, SECRET_PULPO)

CREDENTIALS = """\
credentials:
  - name: billbee-shop
    type: billbee
    username: ${BILLBEE_USERNAME}
    api_password: ${BILLBEE_API_PASSWORD}
    api_key: ${BILLBEE_API_KEY}
  - name: pulpo-wms
    type: pulpo
    username: ${PULPO_USERNAME}
    password: ${PULPO_PASSWORD}
    warehouse_id: 1
"""


def config_text(integrations: str, credentials: str = CREDENTIALS) -> str:
    return credentials + "integrations:\n" + textwrap.indent(textwrap.dedent(integrations), "  ")


def write(tmp_path: Path, text: str, name: str = "integrations.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV if env is None else env)
    return caught.value


def one_line_matching(error: ConfigError, *parts: str) -> str:
    """The single message line that contains all parts (file, entry, field, reason)."""
    lines = [line for line in str(error).splitlines() if all(part in line for part in parts)]
    assert len(lines) == 1, f"expected one line with {parts}, got:\n{error}"
    return lines[0]


# --------------------------------------------------------------------------------------------------
# The example file


def test_example_loads_with_sandbox_env_and_matches_the_guide():
    env = sandbox_env("http://127.0.0.1:8001/api/v1", "http://127.0.0.1:8002/api/v1")
    config = load_config(EXAMPLE, env)

    assert config.source_path == EXAMPLE
    assert [(i.name, i.type, i.source, i.target) for i in config.integrations] == [
        ("Produkte", "products", "billbee-shop", "pulpo-wms"),
        ("Verkaufsaufträge", "sales_orders", "billbee-shop", "pulpo-wms"),
        ("Status updates", "status_updates", "pulpo-wms", "billbee-shop"),
        ("Lagerbestand", "stock", "pulpo-wms", "billbee-shop"),
        ("Versandetiketten", "shipping_labels", "pulpo-wms", "billbee-shop"),
    ]
    assert [i.slug for i in config.integrations] == [
        "produkte", "verkaufsauftraege", "status_updates", "lagerbestand", "versandetiketten"
    ]
    billbee = config.credential("billbee-shop")
    pulpo = config.credential("pulpo-wms")
    assert isinstance(billbee, BillbeeCredential) and isinstance(pulpo, PulpoCredential)
    assert billbee.base_url == "http://127.0.0.1:8001/api/v1"
    assert billbee.username == env["BILLBEE_USERNAME"]
    assert billbee.api_password.get_secret_value() == env["BILLBEE_API_PASSWORD"]
    assert billbee.api_key.get_secret_value() == env["BILLBEE_API_KEY"]
    assert pulpo.password.get_secret_value() == env["PULPO_PASSWORD"]
    assert pulpo.warehouse_id == 1
    orders = config.integration("Verkaufsaufträge").settings
    assert [s.name for s in orders.import_states] == ["Bezahlt"]
    assert orders.cancel_state_ids == [8, 6]                   # Storniert and Gelöscht
    assert config.integration("Status updates").settings.packed_state.id == 13


def test_example_without_env_names_every_missing_variable_but_no_values(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE, {})
    message = str(caught.value)
    for variable in ("BILLBEE_USERNAME", "BILLBEE_API_PASSWORD", "BILLBEE_API_KEY", "PULPO_USERNAME",
                     "PULPO_PASSWORD"):
        assert variable in message
    assert len(message.splitlines()) == 5
    assert all(line.startswith(f"{EXAMPLE}:") for line in message.splitlines())


def test_example_with_shipments_enabled_is_refused_next_to_shipping_labels(tmp_path):
    text = EXAMPLE.read_text(encoding="utf-8")
    enabled = re.sub(r"(?m)^  # (- name: Erzeuge Sendungen)$", r"  \1", text)
    enabled = re.sub(r"(?m)^  #   ", "    ", enabled)
    assert enabled != text
    error = problems_of(tmp_path, enabled)
    line = one_line_matching(error, "integrations.yaml", 'integrations[5] "Erzeuge Sendungen"', "type:")
    assert "shipping_labels" in line and "another service" in line


def test_example_documents_every_setting():
    """Each per-type setting is mentioned in the example (commented or not), so nothing is hidden."""
    from billbee_pulpo_pipeline.config.models import CREDENTIAL_CLASSES, INTEGRATION_CLASSES

    text = EXAMPLE.read_text(encoding="utf-8")
    for cls in INTEGRATION_CLASSES.values():
        for field_name in cls.SETTINGS.model_fields:
            assert re.search(rf"\b{field_name}:", text), f"{cls.__name__}.{field_name} not in the example"
    for cls in CREDENTIAL_CLASSES.values():
        for field_name in cls.model_fields:
            if field_name not in {"env_refs"}:
                assert re.search(rf"\b{field_name}:", text), f"{cls.__name__}.{field_name} not in the example"


def test_every_setting_has_a_description():
    from billbee_pulpo_pipeline.config import LabelProviderRule, ShippingMethodRule
    from billbee_pulpo_pipeline.config.models import CREDENTIAL_CLASSES, INTEGRATION_CLASSES

    models = [cls.SETTINGS for cls in INTEGRATION_CLASSES.values()] + list(CREDENTIAL_CLASSES.values()) \
        + list(INTEGRATION_CLASSES.values()) + [ShippingMethodRule, LabelProviderRule]
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description and len(info.description) > 15, f"{model.__name__}.{name}"


# --------------------------------------------------------------------------------------------------
# Path resolution


def test_resolve_config_path_prefers_argument_then_env_then_default():
    env = {"BPP_CONFIG": "/etc/bpp/from-env.yaml"}
    assert resolve_config_path("given.yaml", env) == Path("given.yaml")
    assert resolve_config_path(None, env) == Path("/etc/bpp/from-env.yaml")
    assert resolve_config_path(None, {}) == Path("integrations.yaml")


def test_load_config_uses_bpp_config_from_env(tmp_path):
    path = write(tmp_path, config_text("- {name: Produkte, type: products, source: billbee-shop, "
                                       "target: pulpo-wms}\n"), name="elsewhere.yaml")
    config = load_config(None, {**ENV, "BPP_CONFIG": str(path)})
    assert config.source_path == path


def test_missing_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing, ENV)
    assert str(missing) in str(caught.value) and "not found" in str(caught.value)


# --------------------------------------------------------------------------------------------------
# Interpolation


@pytest.mark.parametrize(("text", "env", "expected", "missing"), [
    ("${A}", {"A": "x"}, "x", []),
    ("${A}", {}, "", ["A"]),
    ("${A:-fallback}", {}, "fallback", []),
    ("${A:-fallback}", {"A": ""}, "fallback", []),
    ("${A:-fallback}", {"A": "set"}, "set", []),
    ("${A:-}", {}, "", []),
    ("https://${HOST}/api/${VERSION:-v1}", {"HOST": "h.example"}, "https://h.example/api/v1", []),
    ("price $$5 and $$${A}", {"A": "x"}, "price $5 and $x", []),
    ("plain $ sign", {}, "plain $ sign", []),
    ("${A}${B}", {}, "", ["A", "B"]),
    ("${URL:-http://a:b/c}", {}, "http://a:b/c", []),
])
def test_interpolate(text, env, expected, missing):
    assert interpolate(text, env) == (expected, missing)


@pytest.mark.parametrize("text", ["${1A}", "${A B}", "${A:default}", "${}", "open ${A", "${A-x}"])
def test_interpolate_refuses_malformed_references(text):
    with pytest.raises(ValueError, match="NAME"):
        interpolate(text, {"A": "x"})


def test_interpolation_applies_to_any_string_value_and_types_follow(tmp_path):
    credentials = CREDENTIALS.replace("warehouse_id: 1", "warehouse_id: ${WAREHOUSE:-7}")
    text = config_text("""\
        - name: ${ORDERS_NAME:-Aufträge}
          type: sales_orders
          source: billbee-shop
          target: pulpo-wms
          interval_minutes: ${ORDER_INTERVAL}
          import_states: ["${IMPORT_STATE}", Bestätigt]
          skip_coupon_lines: ${SKIP:-false}
    """, credentials)
    config = load_config(write(tmp_path, text), {**ENV, "ORDER_INTERVAL": "15", "IMPORT_STATE": "Bezahlt"})
    orders = config.integrations[0]
    assert orders.name == "Aufträge" and orders.slug == "auftraege"
    assert orders.interval_minutes == 15
    assert orders.settings.import_state_ids == [3, 2]
    assert orders.settings.skip_coupon_lines is False
    assert config.credential("pulpo-wms").warehouse_id == 7


def test_missing_variable_names_file_entry_field_and_variable(tmp_path):
    text = config_text("- {name: Lagerbestand, type: stock, source: pulpo-wms, target: billbee-shop, "
                       "safety_buffer: '${BUFFER}'}\n")
    error = problems_of(tmp_path, text)
    line = one_line_matching(error, "integrations.yaml:", 'integrations[0] "Lagerbestand"', "safety_buffer:")
    assert "BUFFER" in line and "not set" in line


def test_env_refs_record_single_references_without_default(tmp_path):
    credentials = CREDENTIALS.replace(
        "    username: ${BILLBEE_USERNAME}\n",
        "    username: ${BILLBEE_USERNAME}\n    base_url: ${BB_URL:-https://api.billbee.io/api/v1}\n",
    )
    text = config_text("- {name: P, type: products, source: billbee-shop, target: pulpo-wms}\n", credentials)
    config = load_config(write(tmp_path, text), ENV)
    billbee = config.credential("billbee-shop")
    assert billbee.env_refs == {"username": "BILLBEE_USERNAME", "api_password": "BILLBEE_API_PASSWORD",
                                "api_key": "BILLBEE_API_KEY"}
    assert config.credential("pulpo-wms").env_refs == {"username": "PULPO_USERNAME",
                                                       "password": "PULPO_PASSWORD"}


def test_require_env_false_defers_connection_fields_only(tmp_path):
    text = config_text("- {name: P, type: products, source: billbee-shop, target: pulpo-wms}\n")
    config = load_config(write(tmp_path, text), {}, require_env=False)
    billbee = config.credential("billbee-shop")
    assert billbee.username is None and billbee.api_password is None and billbee.api_key is None
    assert billbee.env_refs["api_key"] == "BILLBEE_API_KEY"
    assert billbee.base_url == "https://api.billbee.io/api/v1"

    # Other fields still need their variables: the structure would be wrong without them.
    text = config_text("- {name: P, type: products, source: billbee-shop, target: pulpo-wms, "
                       "interval_minutes: '${EVERY}'}\n")
    with pytest.raises(ConfigError, match=r'integrations\[0\] "P": interval_minutes: .*EVERY'):
        load_config(write(tmp_path, text), {}, require_env=False)


# --------------------------------------------------------------------------------------------------
# Secrets


def test_literal_secrets_are_refused_without_repeating_them(tmp_path):
    credentials = (CREDENTIALS.replace("${BILLBEE_API_PASSWORD}", SECRET_PASSWORD)
                   .replace("${BILLBEE_API_KEY}", f"'{SECRET_KEY}'")
                   .replace("${PULPO_PASSWORD}", f"prefix-${{PULPO_PASSWORD}}-{SECRET_PULPO}"))
    text = config_text("- {name: P, type: products, source: billbee-shop, target: pulpo-wms}\n", credentials)
    error = problems_of(tmp_path, text)
    for field_name, example in (("api_password", "BILLBEE_API_PASSWORD"), ("api_key", "BILLBEE_API_KEY")):
        line = one_line_matching(error, 'credentials[0] "billbee-shop"', f"{field_name}:")
        assert f"must reference an environment variable, e.g. ${{{example}}}" in line
        assert "secrets are not stored in config files" in line
    one_line_matching(error, 'credentials[1] "pulpo-wms"', "password:", "${PULPO_PASSWORD}")
    assert not any(secret in str(error) or secret in repr(error) for secret in SECRETS)
    assert not any(secret in str(problem) for problem in error.problems for secret in SECRETS)


def test_secret_with_default_or_number_is_refused(tmp_path):
    credentials = (CREDENTIALS.replace("${BILLBEE_API_KEY}", f"${{BILLBEE_API_KEY:-{SECRET_KEY}}}")
                   .replace("${PULPO_PASSWORD}", "123456"))
    text = config_text("- {name: P, type: products, source: billbee-shop, target: pulpo-wms}\n", credentials)
    error = problems_of(tmp_path, text)
    one_line_matching(error, "api_key:", "without a default")
    one_line_matching(error, "password:", "must reference an environment variable")
    assert SECRET_KEY not in str(error) and "123456" not in str(error)


def test_secrets_never_in_repr_str_or_dump(tmp_path):
    config = load_config(EXAMPLE, {**ENV})
    rendered = [repr(config), str(config), config.model_dump_json(), str(config.model_dump()),
                repr(config.credentials), str(config.credential("billbee-shop"))]
    for text in rendered:
        for secret in SECRETS:
            assert secret not in text


def test_yaml_error_on_a_secret_line_does_not_quote_the_line(tmp_path):
    text = CREDENTIALS.replace("api_password: ${BILLBEE_API_PASSWORD}", f'api_password: "{SECRET_PASSWORD}') \
        + "integrations: []\n"
    error = problems_of(tmp_path, text)
    assert "invalid YAML" in str(error)
    assert SECRET_PASSWORD not in str(error)


def test_empty_secret_variable_is_reported(tmp_path):
    text = config_text("- {name: P, type: products, source: billbee-shop, target: pulpo-wms}\n")
    error = problems_of(tmp_path, text, {**ENV, "BILLBEE_API_KEY": ""})
    one_line_matching(error, 'credentials[0] "billbee-shop"', "api_key:", "BILLBEE_API_KEY", "empty")


def test_secret_env_value_never_in_messages_even_when_other_fields_fail(tmp_path):
    credentials = CREDENTIALS.replace("warehouse_id: 1", "warehouse_id: -3\n    colour: red")
    text = config_text("- {name: P, type: products, source: billbee-shop, target: pulpo-wms}\n", credentials)
    error = problems_of(tmp_path, text)
    assert len(error.problems) == 2
    assert not any(secret in str(error) for secret in SECRETS)


# --------------------------------------------------------------------------------------------------
# Validation errors: each names file, entry and field, one line per problem


@pytest.mark.parametrize(("integration", "entry", "field_name", "reason"), [
    ("{name: X, type: stocks, source: pulpo-wms, target: billbee-shop}",
     'integrations[0] "X"', "type:", "unknown type 'stocks'"),
    ("{name: X, source: pulpo-wms, target: billbee-shop}", 'integrations[0] "X"', "type:", "missing"),
    ("{name: X, type: stock, source: pulpo, target: billbee-shop}",
     'integrations[0] "X"', "source:", "unknown credential 'pulpo'"),
    ("{name: X, type: products, source: pulpo-wms, target: billbee-shop}",
     'integrations[0] "X"', "source:", "must be a billbee credential"),
    ("{name: X, type: stock, source: billbee-shop, target: pulpo-wms}",
     'integrations[0] "X"', "target:", "must be a billbee credential"),
    ("{name: X, type: products, source: billbee-shop, target: pulpo-wms, interval_minutes: 0}",
     'integrations[0] "X"', "interval_minutes:", "greater than or equal to 1"),
    ("{name: X, type: sales_orders, source: billbee-shop, target: pulpo-wms, interval_minutes: 61}",
     'integrations[0] "X"', "interval_minutes:", "less than or equal to 60"),
    ("{name: X, type: stock, source: pulpo-wms, target: billbee-shop, batch_size: 251}",
     'integrations[0] "X"', "batch_size:", "less than or equal to 250"),
    ("{name: X, type: stock, source: pulpo-wms, target: billbee-shop, reconcile_hours: 169}",
     'integrations[0] "X"', "reconcile_hours:", "less than or equal to 168"),
    ("{name: X, type: stock, source: pulpo-wms, target: billbee-shop, safety_buffer: -1}",
     'integrations[0] "X"', "safety_buffer:", "greater than or equal to 0"),
    ("{name: X, type: sales_orders, source: billbee-shop, target: pulpo-wms, import_states: [Bezahlr]}",
     'integrations[0] "X"', "import_states[0]:", "'Bezahlr' is not a Billbee order state"),
    ("{name: X, type: status_updates, source: pulpo-wms, target: billbee-shop, packed_state: 42}",
     'integrations[0] "X"', "packed_state:", "42 is not a Billbee order state id"),
    ("{name: X, type: sales_orders, source: billbee-shop, target: pulpo-wms, import_states: []}",
     'integrations[0] "X"', "import_states:", "at least 1"),
    ("{name: X, type: sales_orders, source: billbee-shop, target: pulpo-wms, customer: fallback}",
     'integrations[0] "X"', "fallback_customer_id:", "required when customer is 'fallback'"),
    ("{name: X, type: sales_orders, source: billbee-shop, target: pulpo-wms, customer: everyone}",
     'integrations[0] "X"', "customer:", "'none', 'fallback' or 'per_customer'"),
    ("{name: X, type: sales_orders, source: billbee-shop, target: pulpo-wms, cancel_states: [Bezahlt]}",
     'integrations[0] "X"', "cancel_states:", "import and a cancel state"),
    ("{name: X, type: sales_orders, source: billbee-shop, target: pulpo-wms, order_num_template: 'BB-{Nummer}'}",
     'integrations[0] "X"', "order_num_template:", "unknown placeholder {Nummer}"),
    ("{name: X, type: sales_orders, source: billbee-shop, target: pulpo-wms, order_num_template: 'BB-{OrderNumber'}",
     'integrations[0] "X"', "order_num_template:", "is not a valid template"),
    ("{name: X, type: sales_orders, source: billbee-shop, target: pulpo-wms, "
     "order_num_on_collision: '{OrderNumber}-2'}",
     'integrations[0] "X"', "order_num_on_collision:", "must contain {BillbeeShopId} or {BillbeeOrderId}"),
    ("{name: X, type: sales_orders, source: billbee-shop, target: pulpo-wms, require_tags: [FBA], "
     "exclude_tags: [fba]}",
     'integrations[0] "X"', "require_tags:", "fba cannot be required and excluded"),
    ("{name: X, type: products, source: billbee-shop, target: pulpo-wms, titel_language: en}",
     'integrations[0] "X"', "titel_language:", "did you mean 'title_language'"),
    ("{name: X, type: products, source: billbee-shop, target: pulpo-wms, bundles: explode}",
     'integrations[0] "X"', "bundles:", "'kit' or 'skip'"),
    ("{name: X, type: status_updates, source: pulpo-wms, target: billbee-shop, ended_state: Gepackt}",
     'integrations[0] "X"', "ended_state:", "must differ from packed_state"),
    ("{name: X, type: shipping_labels, source: pulpo-wms, target: billbee-shop, provider_map: "
     "[{pulpo_shipping_method_id: 1, billbee_provider_id: 2, billbee_product_id: 3}, "
     "{pulpo_shipping_method_id: 1, billbee_provider_id: 4, billbee_product_id: 5}]}",
     'integrations[0] "X"', "provider_map:", "appears more than once"),
    ("{name: X, type: shipping_labels, source: pulpo-wms, target: billbee-shop, provider_map: "
     "[{pulpo_shipping_method_id: 1, billbee_provider_id: 2.0e+16, billbee_product_id: 3}]}",
     'integrations[0] "X"', "provider_map[0].billbee_provider_id:", "decimal point"),
    ("{name: X, type: sales_orders, source: billbee-shop, target: pulpo-wms, shipping_method_map: "
     "[{billbee_provider: DHL, pulpo_shipping_method_id: 1, carrier: x}]}",
     'integrations[0] "X"', "shipping_method_map[0].carrier:", "unknown key"),
    ("{name: '???', type: products, source: billbee-shop, target: pulpo-wms}",
     'integrations[0] "???"', "name:", "at least one letter or digit"),
])
def test_integration_problems_are_located(tmp_path, integration, entry, field_name, reason):
    error = problems_of(tmp_path, config_text(f"- {integration}\n"))
    line = one_line_matching(error, entry, field_name, reason)
    assert line.startswith(f"{tmp_path / 'integrations.yaml'}:")
    assert re.match(r".*integrations\.yaml:\d+: ", line), "a line number is given"


@pytest.mark.parametrize(("replace", "by", "entry", "field_name", "reason"), [
    ("type: billbee", "type: shopify", 'credentials[0] "billbee-shop"', "type:", "unknown type 'shopify'"),
    ("warehouse_id: 1", "warehouse_id: 0", 'credentials[1] "pulpo-wms"', "warehouse_id:", "greater than"),
    ("warehouse_id: 1", "merchant_id: 3", 'credentials[1] "pulpo-wms"', "warehouse_id:", "missing"),
    ("    username: ${PULPO_USERNAME}\n", "", 'credentials[1] "pulpo-wms"', "username:", "missing"),
    ("type: billbee", "type: billbee\n    base_url: http://api.billbee.io/api/v1",
     'credentials[0] "billbee-shop"', "base_url:", "must use https://"),
    ("type: billbee", "type: billbee\n    base_url: ftp://api.billbee.io/api/v1",
     'credentials[0] "billbee-shop"', "base_url:", "not an http(s) URL"),
    ("type: pulpo", "type: pulpo\n    base_url: https://user:hunter2@eu.pulpo.co/api/v1",
     'credentials[1] "pulpo-wms"', "base_url:", "must not contain credentials"),
    ("type: billbee", "type: billbee\n    rate_limit_per_user: -1", 'credentials[0] "billbee-shop"',
     "rate_limit_per_user:", "greater than or equal to 0"),
    ("type: billbee", "type: billbee\n    api_pasword: ${X}", 'credentials[0] "billbee-shop"',
     "api_pasword:", "did you mean 'api_password'"),
    ("type: billbee", "type: billbee\n    env_refs: {}", 'credentials[0] "billbee-shop"', "env_refs:",
     "unknown key"),
])
def test_credential_problems_are_located(tmp_path, replace, by, entry, field_name, reason):
    credentials = CREDENTIALS.replace(replace, by, 1)
    assert credentials != CREDENTIALS
    text = config_text("- {name: P, type: stock, source: pulpo-wms, target: billbee-shop}\n", credentials)
    error = problems_of(tmp_path, text)
    one_line_matching(error, "integrations.yaml:", entry, field_name, reason)
    assert "hunter2" not in str(error)


def test_http_on_loopback_is_allowed(tmp_path):
    credentials = CREDENTIALS.replace("type: billbee", "type: billbee\n    base_url: http://localhost:9000/api/v1/")
    text = config_text("- {name: P, type: products, source: billbee-shop, target: pulpo-wms}\n", credentials)
    assert load_config(write(tmp_path, text), ENV).credentials[0].base_url == "http://localhost:9000/api/v1"


def test_duplicate_names_and_slugs(tmp_path):
    credentials = CREDENTIALS + CREDENTIALS.split("credentials:\n", 1)[1].split("  - name: pulpo-wms")[0]
    text = config_text("""\
        - {name: Lager, type: stock, source: pulpo-wms, target: billbee-shop}
        - {name: Lager, type: status_updates, source: pulpo-wms, target: billbee-shop}
        - {name: Läger, type: products, source: billbee-shop, target: pulpo-wms}
        - {name: "lager-", type: sales_orders, source: billbee-shop, target: pulpo-wms}
    """, credentials)
    error = problems_of(tmp_path, text)
    one_line_matching(error, 'credentials[2] "billbee-shop"', "name:", "duplicate credential name",
                      "credentials[0]")
    one_line_matching(error, 'integrations[1] "Lager"', "name:", "duplicate integration name",
                      "integrations[0]")
    one_line_matching(error, 'integrations[3] "lager-"', "name:", "'lager'", 'integrations[0] "Lager"')
    assert "integrations[2]" not in str(error), "Läger has slug laeger: distinct"


def test_same_type_twice_for_the_same_systems_is_refused(tmp_path):
    text = config_text("""\
        - {name: A, type: stock, source: pulpo-wms, target: billbee-shop}
        - {name: B, type: stock, source: pulpo-wms, target: billbee-shop}
    """)
    one_line_matching(problems_of(tmp_path, text), 'integrations[1] "B"', "type:", "already runs stock")


def test_labels_and_shipments_for_the_same_pair_conflict_but_not_for_different_pairs(tmp_path):
    text = config_text("""\
        - {name: Labels, type: shipping_labels, source: pulpo-wms, target: billbee-shop}
        - {name: Sendungen, type: shipments, source: pulpo-wms, target: billbee-shop}
    """)
    line = one_line_matching(problems_of(tmp_path, text), 'integrations[1] "Sendungen"', "type:")
    assert "shipping_labels and shipments cannot both run" in line

    second_pulpo = CREDENTIALS + "  - {name: pulpo-2, type: pulpo, username: u, " \
                                 "password: '${PULPO_PASSWORD}', warehouse_id: 2}\n"
    text = config_text("""\
        - {name: Labels, type: shipping_labels, source: pulpo-wms, target: billbee-shop}
        - {name: Sendungen, type: shipments, source: pulpo-2, target: billbee-shop}
    """, second_pulpo)
    config = load_config(write(tmp_path, text), ENV)
    assert [i.type for i in config.integrations] == ["shipping_labels", "shipments"]


def test_bad_yaml_reports_the_line(tmp_path):
    text = config_text("- {name: P, type: products, source: billbee-shop, target: pulpo-wms}\n") \
        + "  - name: broken\n    type: [stock\n"
    error = problems_of(tmp_path, text)
    assert len(error.problems) == 1
    problem = error.problems[0]
    assert problem.line is not None and problem.line >= 15
    assert str(error).startswith(f"{tmp_path / 'integrations.yaml'}:{problem.line}: invalid YAML")


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("- a\n- b\n", "must be a mapping"),
    ("credentials: []\n", "integrations: missing"),
    ("credentials: {}\nintegrations: []\n", "credentials: must be a list"),
    ("credentials: []\nintegrations: []\nintegration: []\n", "did you mean 'integrations'"),
    ("credentials: []\nintegrations: [5]\n", "integrations[0]: must be a mapping"),
    ("credentials: []\nintegrations: []\n---\ncredentials: []\n", "invalid YAML"),
    ("credentials: !!python/object:os.system {}\nintegrations: []\n", "invalid YAML"),
])
def test_structural_problems(tmp_path, text, reason):
    assert reason in str(problems_of(tmp_path, text))


def test_duplicate_yaml_keys_are_reported(tmp_path):
    text = config_text("""\
        - name: P
          type: products
          source: billbee-shop
          target: pulpo-wms
          interval_minutes: 5
          interval_minutes: 50
    """)
    error = problems_of(tmp_path, text)
    one_line_matching(error, 'integrations[0] "P"', "interval_minutes:", "duplicate key")


def test_all_problems_are_collected_one_line_each(tmp_path):
    credentials = CREDENTIALS.replace("warehouse_id: 1", "warehouse_id: 0")
    text = config_text("""\
        - {name: P, type: products, source: billbee-shop, target: pulpo-wms, interval_minutes: 99}
        - {name: O, type: sales_orders, source: billbee-shop, target: nowhere, import_states: [Bestelt]}
        - {name: S, type: stocks, source: pulpo-wms, target: billbee-shop}
    """, credentials)
    error = problems_of(tmp_path, text)
    lines = str(error).splitlines()
    assert len(lines) == len(error.problems) == 5
    numbers = [problem.line for problem in error.problems]
    assert numbers == sorted(numbers), "in file order"
    assert {p.field for p in error.problems} == {"warehouse_id", "interval_minutes", "target",
                                                  "import_states[0]", "type"}


ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**17) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
FIELDS = ["name", "type", "source", "target", "interval_minutes", "import_states", "provider_map",
          "carrier_map", "packed_state", "customer", "batch_size", "title_language", "settings"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field_name=st.sampled_from(FIELDS), value=ANY_VALUE,
       kind=st.sampled_from(["products", "sales_orders", "status_updates", "stock", "shipping_labels",
                             "shipments"]))
def test_any_bad_value_is_a_config_error_never_a_traceback(field_name, value, kind):
    entry = {"name": "X", "type": kind, "source": "pulpo-wms", "target": "billbee-shop"}
    if kind in {"products", "sales_orders"}:
        entry.update(source="billbee-shop", target="pulpo-wms")
    entry[field_name] = value
    text = CREDENTIALS + yaml.safe_dump({"integrations": [entry]}, allow_unicode=True)
    try:
        config = parse_config(text, "fuzz.yaml", ENV)
    except ConfigError as error:
        assert str(error).strip()
        assert all(str(problem).startswith("fuzz.yaml") for problem in error.problems)
    else:
        assert config.integrations[0].type == kind


CREDENTIAL_FIELDS = ["name", "type", "base_url", "username", "password", "api_key", "warehouse_id",
                     "merchant_id", "rate_limit_per_user", "extra"]


@settings(max_examples=100, deadline=None)
@given(field_name=st.sampled_from(CREDENTIAL_FIELDS), value=ANY_VALUE, index=st.sampled_from([0, 1]))
def test_any_bad_credential_value_is_a_config_error_never_a_traceback(field_name, value, index):
    credentials = yaml.safe_load(CREDENTIALS)
    credentials["credentials"][index][field_name] = value
    text = yaml.safe_dump(credentials, allow_unicode=True) + \
        "integrations: [{name: P, type: stock, source: pulpo-wms, target: billbee-shop}]\n"
    try:
        parse_config(text, "fuzz.yaml", ENV)
    except ConfigError as error:
        assert all(str(problem).startswith("fuzz.yaml") for problem in error.problems)
        assert not any(secret in str(error) for secret in SECRETS)


@pytest.mark.parametrize("text", [
    "credentials: []\nintegrations: &a [*a]\n",
    "credentials: []\nintegrations:\n"
    "  - &a {name: x, type: shipments, source: a, target: b, carrier_map: *a}\n",
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ) + "credentials: *i\nintegrations: []\n",
])
def test_recursive_and_exploding_aliases_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_config(text, "alias.yaml", ENV)


# --------------------------------------------------------------------------------------------------
# Slugs, states, defaults, aliases


@pytest.mark.parametrize(("name", "slug"), [
    ("Verkaufsaufträge", "verkaufsauftraege"),
    ("Status updates", "status_updates"),
    ("ÄÖÜ äöü ß", "aeoeue_aeoeue_ss"),
    ("  Erzeuge  Sendungen! ", "erzeuge_sendungen"),
    ("Café-Lager #2", "cafe_lager_2"),
    ("billbee-shop", "billbee_shop"),
    ("A\u0308pfel", "aepfel"),  # decomposed umlaut
])
def test_slugify(name, slug):
    assert slugify(name) == slug
    assert re.fullmatch(r"[a-z0-9_]+", slug)


def test_lookups_by_name_or_slug(tmp_path):
    config = load_config(EXAMPLE, ENV)
    assert config.integration("verkaufsauftraege").name == "Verkaufsaufträge"
    assert config.credential("billbee_shop").name == "billbee-shop"
    assert config.credential("billbee-shop").slug == "billbee_shop"
    with pytest.raises(KeyError, match="Produkte"):
        config.integration("nothing")


def test_states_by_german_name_alias_or_id(tmp_path):
    text = config_text("""\
        - name: O
          type: sales_orders
          source: billbee-shop
          target: pulpo-wms
          import_states: [bestätigt, 3, "Im Fulfillment", paid]
          cancel_states: ["8", Gelöscht]
        - {name: S, type: shipments, source: pulpo-wms, target: billbee-shop, shipped_state: 4}
    """)
    config = load_config(write(tmp_path, text), ENV)
    orders = config.integration("O").settings
    assert orders.import_state_ids == [2, 3, 16, 3]
    assert [s.name for s in orders.import_states] == ["Bestätigt", "Bezahlt", "Im Fulfillment", "Bezahlt"]
    assert orders.cancel_state_ids == [8, 6]
    assert config.integration("S").settings.shipped_state.name == "Versendet"


def test_defaults_for_every_type(tmp_path):
    text = config_text("""\
        - {name: P, type: products, source: billbee-shop, target: pulpo-wms}
        - {name: O, type: sales_orders, source: billbee-shop, target: pulpo-wms}
        - {name: U, type: status_updates, source: pulpo-wms, target: billbee-shop}
        - {name: S, type: stock, source: pulpo-wms, target: billbee-shop}
        - {name: L, type: shipping_labels, source: pulpo-wms, target: billbee-shop}
    """)
    config = load_config(write(tmp_path, text), ENV)
    assert {i.type: i.interval_minutes for i in config.integrations} == {
        t: DEFAULT_INTERVAL_MINUTES[t] for t in ("products", "sales_orders", "status_updates", "stock",
                                                 "shipping_labels")
    }
    assert DEFAULT_INTERVAL_MINUTES == {"products": 60, "sales_orders": 10, "status_updates": 1, "stock": 5,
                                        "shipping_labels": 1, "shipments": 5}
    products = config.integration("P").settings
    assert (products.title_language, products.deactivate_removed, products.bundles) == ("de", True, "kit")
    orders = config.integration("O").settings
    assert orders.import_state_ids == [3] and orders.cancel_state_ids == [8, 6]   # Storniert, Gelöscht
    assert (orders.customer, orders.fallback_customer_id, orders.skip_coupon_lines,
            orders.lookback_hours) == ("none", None, True, 24)
    assert (orders.order_num_template, orders.order_num_on_collision) == ("{OrderNumber}",
                                                                         "{OrderNumber}-{BillbeeShopId}")
    assert (orders.shop_ids, orders.exclude_tags, orders.require_tags) == ([], [], [])
    assert orders.shipping_method_map == []
    updates = config.integration("U").settings
    assert updates.packed_state.name == "Gepackt" and updates.ended_state is None
    stock = config.integration("S").settings
    assert (stock.quantity, stock.autosubtract_reserved, stock.safety_buffer, stock.stock_id,
            stock.batch_size, stock.reconcile_hours) == ("available", False, 0, None, 100, 24)
    assert stock.reserving_state_ids == list(DEFAULT_RESERVING_STATES)
    labels = config.integration("L").settings
    assert (labels.provider_map, labels.change_state_to_send, labels.label_attach) == ([], True, True)
    billbee = config.credential("billbee-shop")
    assert (billbee.rate_limit_per_endpoint, billbee.rate_limit_per_user) == (2.0, 10.0)
    assert billbee.base_url == "https://api.billbee.io/api/v1"
    pulpo = config.credential("pulpo-wms")
    assert pulpo.base_url == "https://eu.pulpo.co/api/v1" and pulpo.merchant_id is None

    shipments_only = config_text("- {name: E, type: shipments, source: pulpo-wms, target: billbee-shop}\n")
    shipments = load_config(write(tmp_path, shipments_only), ENV).integrations[0]
    assert shipments.interval_minutes == 5
    assert (shipments.settings.carrier_map, shipments.settings.set_shipped_state,
            shipments.settings.shipped_state.id) == ({}, True, 4)


def test_per_type_settings_and_big_ids(tmp_path):
    text = config_text("""\
        - name: O
          type: sales_orders
          source: billbee-shop
          target: pulpo-wms
          customer: fallback
          fallback_customer_id: 42
          shipping_method_map:
            - {billbee_provider: DHL, billbee_product: "20000000000012103", pulpo_shipping_method_id: 3}
            - {pulpo_shipping_method_id: 1}
        - name: L
          type: shipping_labels
          source: pulpo-wms
          target: billbee-shop
          provider_map:
            - {pulpo_shipping_method_id: 3, billbee_provider_id: 20000000000012103, billbee_product_id: 7}
        - name: E
          type: shipments
          source: pulpo-wms
          target: billbee-shop-2
          carrier_map: {dhl: DHL, 7: "12"}
    """, CREDENTIALS + "  - {name: billbee-shop-2, type: billbee, username: u, "
         "api_password: '${BILLBEE_API_PASSWORD}', api_key: '${BILLBEE_API_KEY}'}\n")
    config = load_config(write(tmp_path, text), ENV)
    orders = config.integration("O").settings
    assert isinstance(orders, SalesOrdersSettings)
    assert orders.fallback_customer_id == 42
    assert orders.shipping_method_map[0].billbee_provider == "DHL"
    assert orders.shipping_method_map[0].billbee_product == 20000000000012103
    assert orders.shipping_method_map[1].billbee_provider is None
    assert config.integration("L").settings.provider_map[0].billbee_provider_id == 20000000000012103
    assert config.integration("E").settings.carrier_map == {"dhl": "DHL", "7": 12}


def test_german_type_names_from_the_guide_are_accepted(tmp_path):
    text = config_text("""\
        - {name: A, type: Produkte, source: billbee-shop, target: pulpo-wms}
        - {name: B, type: Verkaufsaufträge, source: billbee-shop, target: pulpo-wms}
        - {name: C, type: Status updates, source: pulpo-wms, target: billbee-shop}
        - {name: D, type: Lagerbestand, source: pulpo-wms, target: billbee-shop}
        - {name: E, type: Versandlabel generieren, source: pulpo-wms, target: billbee-shop}
    """, CREDENTIALS.replace("type: pulpo", "type: PULPO WMS API"))
    config = load_config(write(tmp_path, text), ENV)
    assert [i.type for i in config.integrations] == ["products", "sales_orders", "status_updates", "stock",
                                                    "shipping_labels"]
    assert config.credential("pulpo-wms").type == "pulpo"


def test_models_can_be_built_in_code_and_cross_checks_still_apply():
    billbee = BillbeeCredential(name="b", username="u", api_password="x", api_key="y")
    pulpo = PulpoCredential(name="p", username="u", password="z", warehouse_id=3)
    config = IntegrationConfig(credentials=[billbee, pulpo], integrations=[
        {"name": "Orders", "type": "sales_orders", "source": "b", "target": "p",
         "import_states": ["Bestellt"]},
    ])
    assert config.integrations[0].settings.import_state_ids == [1]
    assert "x" not in repr(billbee.api_password)
    with pytest.raises(ValidationError, match="must be a billbee credential"):
        IntegrationConfig(credentials=[billbee, pulpo], integrations=[
            {"name": "Orders", "type": "sales_orders", "source": "p", "target": "b"},
        ])


def test_timeout_seconds_reaches_the_clients_and_is_bounded(tmp_path):
    from billbee_pulpo_pipeline.operations import client_for

    text = config_text("- {name: Produkte, type: products, source: billbee-shop, target: pulpo-wms}\n",
                       CREDENTIALS.replace("    api_key: ${BILLBEE_API_KEY}\n",
                                           "    api_key: ${BILLBEE_API_KEY}\n    timeout_seconds: 7.5\n"))
    config = load_config(write(tmp_path, text), ENV)
    billbee, pulpo = (client_for(c, tmp_path) for c in config.credentials)
    assert billbee.timeout == (5, 7.5) and pulpo.timeout == (5, 60.0)
    error = problems_of(tmp_path, text.replace("timeout_seconds: 7.5", "timeout_seconds: 0"))
    assert "timeout_seconds" in str(error) and "billbee-shop" in str(error)


def test_readme_explains_every_setting():
    """The README's settings table stays true: every per-type setting the loader knows is in it."""
    from billbee_pulpo_pipeline.config import models

    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("### What each setting does", 1)[1].split("###", 1)[0]
    settings = [models.ProductsSettings, models.SalesOrdersSettings, models.StatusUpdatesSettings,
                models.StockSettings, models.ShippingLabelsSettings, models.ShipmentsSettings]
    missing = [f"{cls.__name__}.{name}" for cls in settings for name in cls.model_fields
               if f"| `{name}` |" not in table]
    assert not missing, missing
