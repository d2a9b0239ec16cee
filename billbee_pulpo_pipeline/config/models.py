"""Typed model of `integrations.yaml`: credentials (Billbee, PULPO) and the six integration types.

The YAML stays flat like PULPO's integration form: the per-type settings sit beside name/type/source/target.
`Integration` moves them into `.settings`, a model chosen by `type`. Every field carries a description
because the README's settings reference is generated from them.

Secrets are `SecretStr`, so they never show in a repr, str or dump. The loader (`loader.py`) enforces
that secrets are `${VAR}` references and records the variable names in `Credential.env_refs`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    computed_field,
    field_validator,
    model_validator,
)

from billbee_pulpo_pipeline.clients.billbee.states import DEFAULT_RESERVING_STATES, state_id, state_name
from billbee_pulpo_pipeline.clients.http import check_base_url
from billbee_pulpo_pipeline.mapping import order_numbers

IntegrationType = Literal[
    "products", "sales_orders", "status_updates", "stock", "shipping_labels", "shipments"
]
CredentialType = Literal["billbee", "pulpo"]

INTEGRATION_TYPES: tuple[str, ...] = (
    "products", "sales_orders", "status_updates", "stock", "shipping_labels", "shipments",
)
CREDENTIAL_TYPES: tuple[str, ...] = ("billbee", "pulpo")

# The guide's defaults for products (60) and sales orders (10). The flows that react to warehouse events
# poll every minute or five so a packed box reaches Billbee within the 60 s latency target.
DEFAULT_INTERVAL_MINUTES: dict[str, int] = {
    "products": 60,
    "sales_orders": 10,
    "status_updates": 1,
    "stock": 5,
    "shipping_labels": 1,
    "shipments": 5,
}

DEFAULT_BILLBEE_BASE_URL = "https://api.billbee.io/api/v1"
DEFAULT_PULPO_BASE_URL = "https://eu.pulpo.co/api/v1"

# Fields whose values are secrets, per credential type, with the variable name suggested in messages.
SECRET_FIELDS: dict[str, dict[str, str]] = {
    "billbee": {"api_password": "BILLBEE_API_PASSWORD", "api_key": "BILLBEE_API_KEY"},
    "pulpo": {"password": "PULPO_PASSWORD"},
}
# Connection fields the Dagster layer may resolve in the run worker (dagster.EnvVar) instead of at load.
DEFERRABLE_FIELDS: frozenset[str] = frozenset({"base_url", "username", "api_password", "api_key", "password"})


class FieldError(ValueError):
    """A model-level check that belongs to one field; the loader reports it under that field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


_TRANSLITERATION = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})


def slugify(name: str) -> str:
    """A stable identifier safe for Dagster names: `Verkaufsaufträge` -> `verkaufsauftraege`."""
    text = unicodedata.normalize("NFC", name).lower().translate(_TRANSLITERATION)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def _reject_float(value: Any) -> Any:
    """Ids may have 17 digits (> 2**53); a float would silently change them. YAML's yes/no/true/false
    are not numbers either (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, not {str(value).lower()}")
    if isinstance(value, float):
        raise ValueError("must be a whole number written without a decimal point or exponent")
    return value


def _id_or_name(value: Any) -> Any:
    """Name-or-id fields: digit strings become ints, names are stripped."""
    value = _reject_float(value)
    if isinstance(value, str):
        value = value.strip()
        return int(value) if value.isdigit() else value
    return value


Id = Annotated[int, BeforeValidator(_reject_float), Field(ge=1)]
Whole = Annotated[int, BeforeValidator(_reject_float)]  # counts, hours, minutes: no floats, no booleans
IdOrName = Annotated[int | str, BeforeValidator(_id_or_name)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderState(_Model):
    """A Billbee order state, given in YAML as its German name (as Billbee shows it), an alias or its id."""

    id: int = Field(description="Billbee order state id (1-17).")
    name: str = Field(description="German name as the Billbee UI shows it, for display.")

    @model_validator(mode="before")
    @classmethod
    def _from_name_or_id(cls, value: Any) -> Any:
        if isinstance(value, bool | float):
            raise ValueError(f"{value!r} is not a Billbee order state (use a name like 'Bezahlt' or an id)")
        if isinstance(value, str | int):
            number = state_id(value)  # ValueError names the valid states
            return {"id": number, "name": state_name(number)}
        if isinstance(value, dict) and "id" in value:
            number = state_id(value["id"])
            return {"id": number, "name": state_name(number)}
        return value

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


def _states(*names: str | int) -> list[OrderState]:
    return [OrderState.model_validate(name) for name in names]


def state_ids(states: Iterable[OrderState]) -> list[int]:
    return [state.id for state in states]


# --------------------------------------------------------------------------------------------------
# Credentials


class Credential(_Model):
    """Access data for one system, referenced by name from integrations (PULPO: "Zugangsdaten")."""

    name: str = Field(min_length=1, description="Free name of the access data, referenced by integrations.")
    type: CredentialType = Field(description="System: billbee or pulpo.")
    base_url: str | None = Field(
        description="API base URL. https:// is required; plain http:// only for loopback sandboxes. "
        "None only when loaded with require_env=False and its variable is unset."
    )
    username: str | None = Field(
        min_length=1,
        description="User name. None only when loaded with require_env=False and its variable is unset.",
    )
    timeout_seconds: float = Field(
        60.0, gt=0, le=600,
        description="Seconds to wait for an answer. A read that times out is tried again; a write whose answer "
        "never came is looked up before it is sent again.",
    )
    env_refs: dict[str, str] = Field(
        default_factory=dict,
        description="Set by the loader, not written in YAML: field -> environment variable name for every "
        "field given as a single ${VAR} (always the secrets), so Dagster can wire dagster.EnvVar(name) "
        "and resolve secrets only in the run worker.",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def slug(self) -> str:
        """Identifier derived from the name, safe for Dagster resource and group names."""
        return slugify(self.name)

    @field_validator("name")
    @classmethod
    def _name_has_letters(cls, name: str) -> str:
        name = name.strip()
        if not slugify(name):
            raise ValueError("must contain at least one letter or digit")
        return name

    @field_validator("base_url")
    @classmethod
    def _safe_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        url = url.strip().rstrip("/")
        reason = check_base_url(url)
        if reason:
            raise ValueError(reason)
        return url

    def secret_fields(self) -> tuple[str, ...]:
        return tuple(SECRET_FIELDS[self.type])


class BillbeeCredential(Credential):
    """Billbee API access: user name, API password and the developer API key."""

    type: Literal["billbee"] = Field("billbee", description="Credential type: billbee.")
    base_url: str | None = Field(
        DEFAULT_BILLBEE_BASE_URL, description="Billbee API base URL (default https://api.billbee.io/api/v1)."
    )
    username: str | None = Field(
        min_length=1,
        description="Billbee user name: the main user's e-mail address or an employee user name.",
    )
    api_password: SecretStr | None = Field(
        min_length=1,
        description="API password set under Einstellungen -> Verbindungseinstellungen -> Billbee-API. "
        "Must be an environment variable reference such as ${BILLBEE_API_PASSWORD}.",
    )
    api_key: SecretStr | None = Field(
        min_length=1,
        description="Billbee developer API key (header X-Billbee-Api-Key), issued by Billbee on request. "
        "Must be an environment variable reference such as ${BILLBEE_API_KEY}.",
    )
    rate_limit_per_endpoint: float = Field(
        2.0,
        ge=0,
        description="Requests per second per endpoint; Billbee allows 2. 0 disables this pacing, which is "
        "only sensible against an unthrottled sandbox.",
    )
    rate_limit_per_user: float = Field(
        10.0,
        ge=0,
        description="Requests per second across all endpoints for this user and API key, shared by all "
        "parallel runs. 0 disables it (unthrottled sandboxes only).",
    )
    billbee_filter_timezone: Literal["auto", "UTC", "Europe/Berlin"] = Field(
        "auto",
        description="How the date filters of GET /orders (modifiedAtMin/Max, minOrderDate) are sent: as UTC or as "
        "Europe/Berlin wall time, each with its real offset. Billbee does not document how it reads the offset; "
        "'auto' starts with UTC, checks every window read against the range asked for and switches to the zone "
        "Billbee applied (kept per account in the state store). Every reader of this account uses it.",
    )


class PulpoCredential(Credential):
    """PULPO WMS API access: an API user and the warehouse the integration works in."""

    type: Literal["pulpo"] = Field("pulpo", description="Credential type: pulpo (PULPO WMS API).")
    base_url: str | None = Field(
        DEFAULT_PULPO_BASE_URL, description="PULPO WMS API base URL (default https://eu.pulpo.co/api/v1)."
    )
    username: str | None = Field(min_length=1, description="PULPO API user name.")
    password: SecretStr | None = Field(
        min_length=1,
        description="Password of the PULPO API user. Must be an environment variable reference such as "
        "${PULPO_PASSWORD}.",
    )
    warehouse_id: Id = Field(
        description="PULPO warehouse id the orders are created in and stock is read from."
    )
    merchant_id: Id | None = Field(
        None,
        description="PULPO merchant id, needed only on tenants with several merchants (a 3PL's clients): sent "
        "on every product, customer and sales order the integration creates or updates, and product and "
        "customer lookups see only this merchant's records. Empty = the tenant's default merchant.",
    )


AnyCredential = Annotated[BillbeeCredential | PulpoCredential, Field(discriminator="type")]


# --------------------------------------------------------------------------------------------------
# Per-type settings


class ProductsSettings(_Model):
    """Products: Billbee articles become PULPO products (matched by SKU)."""

    title_language: str = Field(
        "de",
        pattern=r"^[a-z]{2}$",
        description="ISO 639-1 language of the Billbee title used as PULPO product name; products without "
        "a title in this language use their first title.",
    )
    deactivate_removed: bool = Field(
        True,
        description="Deactivate the PULPO product when its Billbee article is deleted, instead of leaving it "
        "active.",
    )
    bundles: Literal["kit", "skip"] = Field(
        "kit",
        description="Billbee bundles (BOM articles): 'kit' creates them as PULPO kits of their components; "
        "'skip' leaves them out.",
    )

    @field_validator("title_language", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class ShippingMethodRule(_Model):
    """One row of the Billbee shipping -> PULPO shipping method table; the first matching row wins."""

    billbee_provider: IdOrName | None = Field(
        None, description="Billbee shipping provider (name or id); empty matches any provider."
    )
    billbee_product: IdOrName | None = Field(
        None, description="Billbee shipping provider product (name or id); empty matches any product."
    )
    pulpo_shipping_method_id: Id = Field(description="PULPO shipping method id set on the sales order.")


class SalesOrdersSettings(_Model):
    """Sales orders: Billbee orders in the import states become PULPO sales orders."""

    import_states: list[OrderState] = Field(
        default_factory=lambda: _states("Bezahlt"),
        min_length=1,
        description="Billbee order states (names or ids) whose orders are transferred to PULPO.",
    )
    cancel_states: list[OrderState] = Field(
        default_factory=lambda: _states("Storniert", "Gelöscht"),
        description="Billbee order states (names or ids) that cancel the PULPO order; empty = never cancel. An "
        "imported order moved to any other state that must not ship (e.g. back to Bestellt) needs attention.",
    )
    shipping_method_map: list[ShippingMethodRule] = Field(
        default_factory=list,
        description="Billbee shipping provider/product -> PULPO shipping_method_id, first match wins; a row "
        "without provider and product is the default. Orders without a match get no shipping method.",
    )
    customer: Literal["none", "fallback", "per_customer"] = Field(
        "none",
        description="PULPO customer on the order: 'none' sends only the delivery address; 'fallback' uses "
        "fallback_customer_id for every order; 'per_customer' creates or reuses one PULPO customer per "
        "Billbee customer.",
    )
    fallback_customer_id: Id | None = Field(
        None, description="PULPO customer id for customer: fallback (required then)."
    )
    skip_coupon_lines: bool = Field(
        True, description="Leave out Billbee coupon/voucher lines, which are not physical goods."
    )
    bundles: Literal["components", "kit"] = Field(
        "components",
        description="Billbee bundle lines (BOM articles): 'components' sends their parts (quantity x Amount), "
        "so PULPO reserves and picks real goods; 'kit' sends the bundle's PULPO kit product, where one exists "
        "(made by the products integration with bundles: kit, or by hand), else the parts.",
    )
    lookback_hours: Whole = Field(
        24,
        ge=1,
        le=720,
        description="How far back the gap filler and `billbee-pulpo sync` look for hourly order windows not read "
        "to their end (hours, 1-720). The first run imports the backlog by state instead (see import_since).",
    )
    order_num_template: str = Field(
        order_numbers.DEFAULT_TEMPLATE,
        description="PULPO order number of an imported order; placeholders {OrderNumber}, {BillbeeShopId}, "
        "{BillbeeOrderId}.",
    )
    order_num_on_collision: str = Field(
        order_numbers.DEFAULT_ON_COLLISION,
        description="PULPO order number when the first is already used by another Billbee order (another "
        "shop); must contain {BillbeeShopId} or {BillbeeOrderId}. If that is taken too, -{BillbeeOrderId} "
        "is appended.",
    )
    shop_ids: list[Id] = Field(
        default_factory=list,
        description="Billbee shop ids (Seller.BillbeeShopId) whose orders this warehouse fulfils; empty = all "
        "shops. Orders of other shops are skipped with the reason.",
    )
    exclude_tags: list[str] = Field(
        default_factory=list,
        description="Billbee order tags (case-insensitive) that keep an order out of PULPO, e.g. FBA or "
        "Dropshipping; such orders are skipped with the reason.",
    )
    require_tags: list[str] = Field(
        default_factory=list,
        description="If set, only orders carrying at least one of these Billbee tags (case-insensitive) go to "
        "PULPO; others are skipped with the reason.",
    )
    sweep_minutes: Whole = Field(
        60,
        ge=5,
        le=1440,
        description="Minutes between state sweeps (5-1440): GET /orders of the import states changed in the last "
        "sweep_days, independent of the modification cursor; orders PULPO lacks are imported and counted as "
        "sweep_recovered. Above 60 it must be whole hours.",
    )
    sweep_days: Whole = Field(
        14, ge=1, le=90, description="How far back (by last change, days) each state sweep looks (1-90)."
    )
    import_since: date | None = Field(
        None,
        description="Orders whose OrderDate is before this date (YYYY-MM-DD, UTC) are never imported, e.g. old "
        "orders already shipped by hand before go-live; empty = every order in an import state.",
    )
    start_date: datetime | None = Field(
        None,
        description="First hour of the hourly order windows (ISO date or date-time, UTC); empty = the hour "
        "before the integration was first loaded (its go-live, kept in BPP_HOME/go_live/).",
    )

    @field_validator("start_date")
    @classmethod
    def _utc_start(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @property
    def import_state_ids(self) -> list[int]:
        return state_ids(self.import_states)

    @property
    def cancel_state_ids(self) -> list[int]:
        return state_ids(self.cancel_states)

    @model_validator(mode="after")
    def _consistent(self) -> SalesOrdersSettings:
        overlap = sorted({s.name for s in self.import_states} & {s.name for s in self.cancel_states})
        if overlap:
            raise FieldError("cancel_states", f"{', '.join(overlap)} cannot be an import and a cancel state")
        if self.customer == "fallback" and self.fallback_customer_id is None:
            raise FieldError("fallback_customer_id", "required when customer is 'fallback'")
        for name, collision in (("order_num_template", False), ("order_num_on_collision", True)):
            problem = order_numbers.template_problem(getattr(self, name), collision=collision)
            if problem:
                raise FieldError(name, problem)
        if self.order_num_template.strip() == self.order_num_on_collision.strip():
            raise FieldError("order_num_on_collision", "must differ from order_num_template")
        clash = sorted({t.casefold() for t in self.exclude_tags} & {t.casefold() for t in self.require_tags})
        if clash:
            raise FieldError("require_tags", f"{', '.join(clash)} cannot be required and excluded")
        if self.sweep_minutes > 60 and self.sweep_minutes % 60:
            raise FieldError("sweep_minutes", "above 60 it must be whole hours (120, 180, ...)")
        seen: set[tuple[Any, Any]] = set()
        for rule in self.shipping_method_map:
            match = (rule.billbee_provider, rule.billbee_product)
            if match in seen:
                raise FieldError("shipping_method_map", f"two rows match provider {match[0]!r}, "
                                 f"product {match[1]!r}; only the first would ever apply")
            seen.add(match)
        return self


class StatusUpdatesSettings(_Model):
    """Status updates: PULPO packing progress sets the Billbee order state."""

    packed_state: OrderState = Field(
        default_factory=lambda: OrderState.model_validate("Gepackt"),
        description="Billbee state set when PULPO has packed the order.",
    )
    ended_state: OrderState | None = Field(
        None,
        description="Billbee state set when PULPO finishes (ships) the order, e.g. Versendet; empty when the "
        "shipping labels or shipments flow sets it.",
    )

    @model_validator(mode="after")
    def _distinct(self) -> StatusUpdatesSettings:
        if self.ended_state is not None and self.ended_state.id == self.packed_state.id:
            raise FieldError("ended_state", "must differ from packed_state")
        return self


class StockSettings(_Model):
    """Stock: PULPO quantities are written to Billbee as absolute values."""

    quantity: Literal["available", "total"] = Field(
        "available",
        description="PULPO quantity sent: 'available' (sellable: physical minus reserved) or 'total' "
        "(physical on hand).",
    )
    autosubtract_reserved: bool = Field(
        False,
        description="Set Billbee's AutosubtractReservedAmount so Billbee subtracts its unfulfilled quantity "
        "from the value sent; open orders are then not subtracted by the integration. Meant for quantity: "
        "total; 'available' is already net of PULPO's reservations.",
    )
    safety_buffer: Whole = Field(
        0, ge=0, description="Units held back per article: Billbee gets max(0, quantity - safety_buffer)."
    )
    stock_id: Id | None = Field(
        None, description="Billbee stock location (StockId) for multi-stock accounts; empty = default stock."
    )
    reserving_states: list[OrderState] = Field(
        default_factory=lambda: _states(*DEFAULT_RESERVING_STATES),
        description="Billbee order states in which Billbee has already taken stock for an unshipped order "
        "(default: Bestellt, Bestätigt, Bezahlt, Angemahnt, 2. Mahnung, Zahlungserinnerung, Gepackt, Im "
        "Fulfillment). Quantities of such orders that PULPO has not reserved yet are subtracted from the "
        "quantity sent, so an absolute write does not sell them twice.",
    )
    batch_size: Whole = Field(
        100, ge=1, le=250,
        description="Articles per Billbee updatestockmultiple call (1-250). Billbee documents no maximum; 100 "
        "keeps a call small (a failed call re-sends at most 100 rows) with half the calls of the 50 a public "
        "integration uses.",
    )
    reconcile_hours: Whole = Field(
        24,
        ge=1,
        le=168,
        description="Hours between full reconciliations (1-168): Billbee's current stock of every article is "
        "read and each one that differs from its target is written again, which repairs manual edits in Billbee.",
    )
    open_orders_lookback_days: Whole = Field(
        30,
        ge=1,
        le=365,
        description="Open Billbee orders (in reserving_states) last changed within this many days are "
        "subtracted while PULPO does not have them (1-365). Older ones are taken as abandoned.",
    )

    @property
    def reserving_state_ids(self) -> list[int]:
        return state_ids(self.reserving_states)


def _shipping_methods_field(handles: str) -> Any:
    return Field(
        None, min_length=1,
        description=f"Only packing orders whose PULPO sales order has one of these PULPO shipping method ids "
        f"{handles}; the others are left to the other integration. Empty = every packing order. Set it on "
        "both shipping_labels and shipments (disjoint lists) to run them for the same systems, e.g. DHL labels "
        "by Billbee and DPD labels by Sendcloud.",
    )


def _distinct_methods(methods: list[int]) -> list[int]:
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise ValueError(f"shipping method {', '.join(map(str, duplicates))} appears more than once")
    return methods


ShippingMethodIds = Annotated[list[Id], AfterValidator(_distinct_methods)]


class LabelProviderRule(_Model):
    """Which Billbee shipping provider/product creates the label for one PULPO shipping method."""

    pulpo_shipping_method_id: Id = Field(description="PULPO shipping method id of the order.")
    billbee_provider_id: Id = Field(
        description="Billbee shipping provider id (GET /shipment/shippingproviders)."
    )
    billbee_product_id: Id = Field(description="Billbee shipping provider product id.")


class ShippingLabelsSettings(_Model):
    """Shipping labels: Billbee creates the label (shipwithlabel) for each packed PULPO box."""

    provider_map: list[LabelProviderRule] = Field(
        default_factory=list,
        description="PULPO shipping method -> Billbee provider and product for the label. Methods without "
        "a row use the provider/product already set on the Billbee order.",
    )
    change_state_to_send: bool = Field(
        True,
        description="Let Billbee set the order to Versendet when the label is created (ChangeStateToSend).",
    )
    label_attach: bool = Field(
        True, description="Attach the label PDF from Billbee to the PULPO packing box for printing."
    )
    pulpo_shipping_methods: ShippingMethodIds | None = _shipping_methods_field("get a Billbee label")

    @field_validator("provider_map")
    @classmethod
    def _one_rule_per_method(cls, rules: list[LabelProviderRule]) -> list[LabelProviderRule]:
        methods = [rule.pulpo_shipping_method_id for rule in rules]
        duplicates = sorted({m for m in methods if methods.count(m) > 1})
        if duplicates:
            listed = ", ".join(map(str, duplicates))
            raise ValueError(f"pulpo_shipping_method_id {listed} appears more than once")
        return rules


class ShipmentsSettings(_Model):
    """Shipments: tracking numbers of labels made elsewhere (Sendcloud, VCE, ...) go to the Billbee order."""

    carrier_map: dict[str, IdOrName] = Field(
        default_factory=dict,
        description="PULPO carrier_code -> Billbee carrier (name or CarrierId). Unmapped carriers are sent "
        "without a carrier.",
    )
    set_shipped_state: bool = Field(
        True, description="Set the Billbee order to shipped_state after the tracking."
    )
    shipped_state: OrderState = Field(
        default_factory=lambda: OrderState.model_validate("Versendet"),
        description="Billbee state set after the tracking is added.",
    )
    use_order_shipping_provider: bool = Field(
        True,
        description="Send the Billbee order's own shipping provider and product with each shipment; false "
        "sends only the tracking number and the carrier.",
    )
    tracking_wait_hours: Whole = Field(
        48,
        ge=1,
        le=168,
        description="How long (hours, 1-168) after packing the boxes are watched for tracking codes from the "
        "label service; a packing order whose boxes got none by then is reported as needing attention.",
    )
    pulpo_shipping_methods: ShippingMethodIds | None = _shipping_methods_field(
        "get their tracking from this label service")

    @field_validator("carrier_map", mode="before")
    @classmethod
    def _string_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(key).strip(): item for key, item in value.items()}
        return value


IntegrationSettings = (
    ProductsSettings | SalesOrdersSettings | StatusUpdatesSettings | StockSettings | ShippingLabelsSettings
    | ShipmentsSettings
)


# --------------------------------------------------------------------------------------------------
# Integrations


SettingsModel = type[BaseModel]  # alias: inside Integration, `type` is a field name


def _type(kind: str) -> Any:
    return Field(kind, description=f"Integration type: {kind}.")


def _settings(model: SettingsModel, kind: str) -> Any:
    return Field(default_factory=model, description=f"Settings of the {kind} type, written flat in YAML.")


def _interval(kind: str) -> Any:
    default = DEFAULT_INTERVAL_MINUTES[kind]
    return Field(default, ge=1, le=60, description=f"Minutes between runs (1-60, default {default}).")


class Integration(_Model):
    """One integration ("Integrationskonfiguration"): a type, a source and a target credential."""

    COMMON_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"name", "type", "source", "target", "interval_minutes"}
    )
    SOURCE_TYPE: ClassVar[str]
    TARGET_TYPE: ClassVar[str]
    SETTINGS: ClassVar[SettingsModel]

    name: str = Field(min_length=1, description="Unique name; its slug becomes the Dagster group name.")
    type: IntegrationType = Field(description="Integration type.")
    source: str = Field(min_length=1, description="Name of the credential the data is read from.")
    target: str = Field(min_length=1, description="Name of the credential the data is written to.")
    interval_minutes: Whole = Field(ge=1, le=60, description="Minutes between runs (1-60).")
    settings: IntegrationSettings = Field(description="Per-type settings, written beside name/type in YAML.")

    @model_validator(mode="before")
    @classmethod
    def _nest_settings(cls, data: Any) -> Any:
        """Flat YAML keys other than the common ones are the settings of the type."""
        if isinstance(data, dict) and not isinstance(data.get("settings"), BaseModel):
            nested = {key: value for key, value in data.items() if key in cls.COMMON_KEYS}
            nested["settings"] = {key: value for key, value in data.items() if key not in cls.COMMON_KEYS}
            return nested
        return data

    @field_validator("name", "source", "target", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        """Before min_length, so a blank value is reported here and not later as an unknown credential ''."""
        return value.strip() if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _name_has_letters(cls, name: str) -> str:
        if not slugify(name):
            raise ValueError("must contain at least one letter or digit")
        return name

    @computed_field  # type: ignore[prop-decorator]
    @property
    def slug(self) -> str:
        """Identifier derived from the name, safe for Dagster group and asset names."""
        return slugify(self.name)

    @classmethod
    def allowed_keys(cls) -> list[str]:
        return ["name", "type", "source", "target", "interval_minutes", *cls.SETTINGS.model_fields]


class ProductsIntegration(Integration):
    """Produkte: Billbee -> PULPO."""

    SOURCE_TYPE: ClassVar[str] = "billbee"
    TARGET_TYPE: ClassVar[str] = "pulpo"
    SETTINGS: ClassVar[SettingsModel] = ProductsSettings
    type: Literal["products"] = _type("products")
    interval_minutes: Whole = _interval("products")
    settings: ProductsSettings = _settings(ProductsSettings, "products")


class SalesOrdersIntegration(Integration):
    """Verkaufsaufträge: Billbee -> PULPO."""

    SOURCE_TYPE: ClassVar[str] = "billbee"
    TARGET_TYPE: ClassVar[str] = "pulpo"
    SETTINGS: ClassVar[SettingsModel] = SalesOrdersSettings
    type: Literal["sales_orders"] = _type("sales_orders")
    interval_minutes: Whole = _interval("sales_orders")
    settings: SalesOrdersSettings = _settings(SalesOrdersSettings, "sales_orders")


class StatusUpdatesIntegration(Integration):
    """Status updates: PULPO -> Billbee."""

    SOURCE_TYPE: ClassVar[str] = "pulpo"
    TARGET_TYPE: ClassVar[str] = "billbee"
    SETTINGS: ClassVar[SettingsModel] = StatusUpdatesSettings
    type: Literal["status_updates"] = _type("status_updates")
    interval_minutes: Whole = _interval("status_updates")
    settings: StatusUpdatesSettings = _settings(StatusUpdatesSettings, "status_updates")


class StockIntegration(Integration):
    """Lagerbestand: PULPO -> Billbee."""

    SOURCE_TYPE: ClassVar[str] = "pulpo"
    TARGET_TYPE: ClassVar[str] = "billbee"
    SETTINGS: ClassVar[SettingsModel] = StockSettings
    type: Literal["stock"] = _type("stock")
    interval_minutes: Whole = _interval("stock")
    settings: StockSettings = _settings(StockSettings, "stock")


class ShippingLabelsIntegration(Integration):
    """Versandlabel generieren: labels by Billbee for PULPO boxes."""

    SOURCE_TYPE: ClassVar[str] = "pulpo"
    TARGET_TYPE: ClassVar[str] = "billbee"
    SETTINGS: ClassVar[SettingsModel] = ShippingLabelsSettings
    type: Literal["shipping_labels"] = _type("shipping_labels")
    interval_minutes: Whole = _interval("shipping_labels")
    settings: ShippingLabelsSettings = _settings(ShippingLabelsSettings, "shipping_labels")


class ShipmentsIntegration(Integration):
    """Erzeuge Sendungen: PULPO tracking -> Billbee, only when labels come from another service."""

    SOURCE_TYPE: ClassVar[str] = "pulpo"
    TARGET_TYPE: ClassVar[str] = "billbee"
    SETTINGS: ClassVar[SettingsModel] = ShipmentsSettings
    type: Literal["shipments"] = _type("shipments")
    interval_minutes: Whole = _interval("shipments")
    settings: ShipmentsSettings = _settings(ShipmentsSettings, "shipments")


INTEGRATION_CLASSES: dict[str, type[Integration]] = {
    "products": ProductsIntegration,
    "sales_orders": SalesOrdersIntegration,
    "status_updates": StatusUpdatesIntegration,
    "stock": StockIntegration,
    "shipping_labels": ShippingLabelsIntegration,
    "shipments": ShipmentsIntegration,
}
CREDENTIAL_CLASSES: dict[str, type[Credential]] = {"billbee": BillbeeCredential, "pulpo": PulpoCredential}

AnyIntegration = Annotated[
    ProductsIntegration | SalesOrdersIntegration | StatusUpdatesIntegration | StockIntegration
    | ShippingLabelsIntegration | ShipmentsIntegration,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------------------------------
# Checks across entries


@dataclass(frozen=True)
class EntryRef:
    """What the cross-entry checks need of one entry; built from models or from raw YAML."""

    index: int
    name: str | None = None
    type: str | None = None
    source: str | None = None
    target: str | None = None
    shipping_methods: frozenset[int] | None = None  # shipping_labels/shipments: pulpo_shipping_methods
    settings_valid: bool = True  # False: the entry's own errors are reported, its settings are unknown


def shipping_methods_of(settings: Any) -> frozenset[int] | None:
    """The `pulpo_shipping_methods` filter of a labels or shipments integration's settings, if any."""
    methods = getattr(settings, "pulpo_shipping_methods", None)
    return frozenset(methods) if methods else None


CrossProblem = tuple[str, int, str, str]  # (section, index, field, message)


def _unique(section: str, label: str, entries: list[EntryRef]) -> list[CrossProblem]:
    problems: list[CrossProblem] = []
    first_by_name: dict[str, int] = {}
    first_by_slug: dict[str, EntryRef] = {}
    for entry in entries:
        if entry.name is None:
            continue
        if entry.name in first_by_name:
            problems.append((section, entry.index, "name",
                             f"duplicate {label} name (also {section}[{first_by_name[entry.name]}])"))
            continue
        first_by_name[entry.name] = entry.index
        slug = slugify(entry.name)
        other = first_by_slug.get(slug)
        if slug and other is not None:
            problems.append((section, entry.index, "name", f"its identifier '{slug}' is the same as that of "
                             f"{section}[{other.index}] \"{other.name}\"; choose a more distinct name"))
        elif slug:
            first_by_slug[slug] = entry
    return problems


def _links(credentials: list[EntryRef], integrations: list[EntryRef]) -> list[CrossProblem]:
    """Sources and targets exist and point in the direction the integration type moves data."""
    problems: list[CrossProblem] = []
    kinds: dict[str, str | None] = {}
    for credential in credentials:
        if credential.name is not None:
            kinds.setdefault(credential.name, credential.type)  # a duplicate name is reported elsewhere
    defined = ", ".join(sorted(kinds)) or "none"
    for entry in integrations:
        cls = INTEGRATION_CLASSES.get(entry.type or "")
        for field, wanted in (("source", cls and cls.SOURCE_TYPE), ("target", cls and cls.TARGET_TYPE)):
            ref = getattr(entry, field)
            if ref is None:
                continue
            if ref not in kinds:
                problems.append(("integrations", entry.index, field,
                                 f"unknown credential '{ref}' (defined: {defined})"))
            elif wanted and kinds[ref] in CREDENTIAL_TYPES and kinds[ref] != wanted:
                direction = f"{cls.SOURCE_TYPE} -> {cls.TARGET_TYPE}" if cls else ""
                problems.append(("integrations", entry.index, field,
                                 f"'{ref}' is a {kinds[ref]} credential, but a {entry.type} integration "
                                 f"moves data {direction}, so its {field} must be a {wanted} credential"))
    return problems


def _overlaps(integrations: list[EntryRef]) -> list[CrossProblem]:
    """Two integrations writing the same kind of data for the same pair would fight each other."""
    problems: list[CrossProblem] = []
    seen: dict[tuple[str | None, str | None, str], EntryRef] = {}
    for entry in integrations:
        if entry.type not in INTEGRATION_TYPES or entry.source is None or entry.target is None:
            continue
        pair = (entry.source, entry.target)
        same = seen.get((*pair, entry.type))
        if same is not None:
            problems.append(("integrations", entry.index, "type",
                             f"integrations[{same.index}] \"{same.name}\" already runs {entry.type} for "
                             f"{entry.source} -> {entry.target}"))
            continue
        seen[(*pair, entry.type)] = entry
        other_type = {"shipments": "shipping_labels", "shipping_labels": "shipments"}.get(entry.type)
        other = seen.get((*pair, other_type)) if other_type else None
        if other is not None:
            problems += _labels_and_shipments(entry, other)
    return problems


def _labels_and_shipments(entry: EntryRef, other: EntryRef) -> list[CrossProblem]:
    """Both for one pair only with disjoint `pulpo_shipping_methods`: every box gets its tracking from one."""
    if not (entry.settings_valid and other.settings_valid):
        return []   # the entry's own errors are reported; its filter is unknown
    if entry.shipping_methods and other.shipping_methods:
        shared = sorted(entry.shipping_methods & other.shipping_methods)
        if not shared:
            return []
        return [("integrations", entry.index, "pulpo_shipping_methods",
                 f"shipping method{'s' if len(shared) > 1 else ''} {', '.join(map(str, shared))} "
                 f"{'are' if len(shared) > 1 else 'is'} also in integrations[{other.index}] \"{other.name}\": "
                 "a shipping method's boxes get their tracking either from Billbee labels or from another "
                 "label service, not both")]
    return [("integrations", entry.index, "type",
             f"shipping_labels and shipments cannot both run for {entry.source} -> {entry.target} (conflicts "
             f"with integrations[{other.index}] \"{other.name}\"): use shipments only when labels come from "
             "another service (Sendcloud, VCE), or give both a pulpo_shipping_methods list with no method in both")]


def cross_check(credentials: list[EntryRef], integrations: list[EntryRef]) -> list[CrossProblem]:
    """Checks that span entries: unique names and slugs, known credentials, direction, conflicting types."""
    return (
        _unique("credentials", "credential", credentials)
        + _unique("integrations", "integration", integrations)
        + _links(credentials, integrations)
        + _overlaps(integrations)
    )


# --------------------------------------------------------------------------------------------------
# Alerts

# Secret alert fields, with the variable name suggested in messages.
ALERT_SECRET_FIELDS: dict[str, str] = {"slack_webhook_url": "SLACK_WEBHOOK_URL", "slack_token": "SLACK_BOT_TOKEN"}
_SLACK_CHANNEL = re.compile(r"#[a-z0-9][a-z0-9._-]{0,79}|[CGD][A-Z0-9]{8,}")


class AlertsConfig(_Model):
    """Where alerts about failed runs and new quarantine entries go (optional section `alerts`)."""

    slack_webhook_url: SecretStr | None = Field(
        None, description="Slack incoming-webhook URL (the channel is chosen when the webhook is created). A secret: "
        "must be an environment variable reference such as ${SLACK_WEBHOOK_URL}.",
    )
    slack_token: SecretStr | None = Field(
        None, description="Slack bot token (xoxb-…, scope chat:write), instead of a webhook; needs slack_channel. "
        "A secret: must be an environment variable reference such as ${SLACK_BOT_TOKEN}.",
    )
    slack_channel: str | None = Field(
        None, description="Channel the bot posts to: a name such as \"#lager\" (the bot must be a member) or a "
        "channel id such as C0123456789. Only with slack_token.",
    )
    dagster_url: str | None = Field(
        None, description="Address of the Dagster UI, e.g. https://dagster.example.com: messages then link to the run "
        "(default: $DAGSTER_WEBSERVER_URL when set).",
    )
    env_refs: dict[str, str] = Field(
        default_factory=dict,
        description="Set by the loader, not written in YAML: field -> environment variable name of the secrets, so "
        "Dagster reads them as dagster.EnvVar when a sensor posts.",
    )

    def configured(self, field: str) -> bool:
        """Given in the file (its value may be deferred to the sensor: then only `env_refs` has it)."""
        return getattr(self, field) is not None or field in self.env_refs

    @field_validator("slack_channel")
    @classmethod
    def _channel(cls, channel: str | None) -> str | None:
        if channel is None:
            return None
        channel = channel.strip()
        if not _SLACK_CHANNEL.fullmatch(channel):
            raise ValueError(f"'{channel}' is not a Slack channel: write its name with # (lower case, no spaces, "
                             "e.g. \"#lager\"; quote it in YAML) or its id (e.g. C0123456789)")
        return channel

    @field_validator("slack_webhook_url")
    @classmethod
    def _webhook(cls, url: SecretStr | None) -> SecretStr | None:
        # The URL itself is the secret: the message says what is wrong without repeating it.
        if url is not None and check_base_url(url.get_secret_value().strip()) is not None:
            raise ValueError("the variable's value is not an https:// URL (Slack's webhook URLs start with "
                             "https://hooks.slack.com/services/)")
        return url

    @field_validator("dagster_url")
    @classmethod
    def _dagster_url(cls, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        url = url.strip().rstrip("/")
        if not re.fullmatch(r"https?://[^\s/@]+(/\S*)?", url):
            raise ValueError(f"'{url}' is not an http(s) address of the Dagster UI")
        return url

    @model_validator(mode="after")
    def _one_target(self) -> AlertsConfig:
        webhook, token, channel = (self.configured(f) for f in ("slack_webhook_url", "slack_token", "slack_channel"))
        if webhook and token:
            raise FieldError("slack_token", "give either slack_webhook_url or slack_token (with slack_channel), "
                                            "not both")
        if token and not channel:
            raise FieldError("slack_channel", "missing (required with slack_token): the channel the bot posts to")
        if channel and not token:
            raise FieldError("slack_channel", "only used with slack_token (a webhook posts to the channel it "
                                              "was created for)")
        return self


class IntegrationConfig(_Model):
    """The whole configuration file: credentials and the integrations that use them."""

    credentials: list[AnyCredential] = Field(description="Access data for Billbee and PULPO.")
    integrations: list[AnyIntegration] = Field(description="The configured integrations.")
    alerts: AlertsConfig | None = Field(None, description="Slack alerts for failed runs and new quarantine entries.")
    source_path: Path = Field(Path("integrations.yaml"), description="File the configuration was read from.")

    @model_validator(mode="after")
    def _cross_entries(self) -> IntegrationConfig:
        problems = cross_check(
            [EntryRef(index=i, name=c.name, type=c.type) for i, c in enumerate(self.credentials)],
            [EntryRef(index=i, name=n.name, type=n.type, source=n.source, target=n.target,
                      shipping_methods=shipping_methods_of(n.settings)) for i, n in enumerate(self.integrations)],
        )
        if problems:
            raise ValueError("; ".join(f"{s}[{i}].{f}: {m}" for s, i, f, m in problems))
        return self

    def credential(self, name: str) -> BillbeeCredential | PulpoCredential:
        """The credential with this name (or slug); KeyError naming the defined ones otherwise."""
        for credential in self.credentials:
            if name in (credential.name, credential.slug):
                return credential
        raise KeyError(f"no credential '{name}' (defined: {', '.join(c.name for c in self.credentials)})")

    def integration(self, name: str) -> Integration:
        """The integration with this name (or slug); KeyError naming the defined ones otherwise."""
        for integration in self.integrations:
            if name in (integration.name, integration.slug):
                return integration
        raise KeyError(f"no integration '{name}' (defined: {', '.join(i.name for i in self.integrations)})")

    def integrations_of_type(self, kind: str) -> list[Integration]:
        return [integration for integration in self.integrations if integration.type == kind]
