"""Typed PULPO WMS records (responses) and request payloads, after spec v4.6.50.

Response models accept unknown fields (`extra="allow"`): PULPO adds fields between releases and a
new field must not break a sync. Payload models coerce to the spec's wire types, because PULPO
validates them strictly: `attributes` is a JSON *string*, quantities are integers and
`external_order_num` is a string (a Billbee id is a 17-digit int, and must never become a float).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

logger = logging.getLogger("billbee_pulpo_pipeline.pulpo")

PULPO_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"


# --------------------------------------------------------------------------------------------------
# Dates


def to_utc(value: datetime) -> datetime:
    """An aware UTC datetime; naive datetimes are taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def format_pulpo_datetime(value: datetime) -> str:
    """`YYYY-MM-DD hh:mm:ss` in UTC, the format of PULPO's date filters."""
    return to_utc(value).strftime(PULPO_DATETIME_FORMAT)


def date_filter(operator: str, value: datetime) -> str:
    """A PULPO operator filter such as `gte:2026-06-01 00:00:00`."""
    return f"{operator}:{format_pulpo_datetime(value)}"


def parse_pulpo_datetime(value: Any) -> datetime | None:
    """Parse PULPO's timestamps (ISO 8601 with `T` or a space, with or without zone) as aware UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return to_utc(value)
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return to_utc(datetime.fromisoformat(text))
    except ValueError:
        logger.debug("unparseable PULPO timestamp %r", value)
        return None


# --------------------------------------------------------------------------------------------------
# Wire-type coercions


def _json_text(value: Any) -> Any:
    """PULPO types `attributes` as a JSON string: serialise dicts and lists, pass strings through."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _as_str(value: Any) -> Any:
    """Numbers become strings without passing through float; bools are refused (almost always a bug)."""
    if isinstance(value, bool):
        raise ValueError("expected a string, got a boolean")
    if isinstance(value, int):
        return str(value)
    return value


def _barcode_list(value: Any) -> Any:
    """Barcodes are strings in the spec; tolerate `{code: ...}` objects (PULPO's Barcode record)."""
    if not isinstance(value, list):
        return value
    codes = [(item.get("code") or item.get("barcode")) if isinstance(item, dict) else item for item in value]
    return [code for code in codes if code not in (None, "")]


JsonText = Annotated[str | None, BeforeValidator(_json_text)]
StrId = Annotated[str | None, BeforeValidator(_as_str)]
Timestamp = Annotated[datetime | None, BeforeValidator(parse_pulpo_datetime)]
Barcodes = Annotated[list[str], BeforeValidator(_barcode_list)]


def parse_attributes(raw: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The `attributes` JSON text as a dict; {} when empty or not a JSON object."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------------------------------
# Response records


class PulpoRecord(BaseModel):
    """Base of every PULPO response record: unknown fields are kept, never rejected."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class WithAttributes(PulpoRecord):
    attributes: JsonText = None

    @property
    def attributes_dict(self) -> dict[str, Any]:
        return parse_attributes(self.attributes)


class User(PulpoRecord):
    id: int | None = None
    username: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    active: bool | None = None
    tenant_id: int | None = None
    type: str | None = None
    warehouses: list[Warehouse] = Field(default_factory=list)


class Warehouse(PulpoRecord):
    id: int | None = None
    name: str | None = None
    active: bool | None = None
    tenant_id: int | None = None
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    zip_code: str | None = None
    country_code: str | None = None
    company_name: str | None = None


class Product(WithAttributes):
    id: int | None = None
    sku: str | None = None
    name: str | None = None
    description: str | None = None
    article_number: str | None = None
    barcodes: Barcodes = Field(default_factory=list)
    active: bool | None = None
    weight: float | None = None
    height: float | None = None
    length: float | None = None
    width: float | None = None
    volume: float | None = None
    hs_code: str | None = None
    origin_country: str | None = None
    merchant_id: int | None = None
    management_type: str | None = None
    deleted: bool | None = None
    updated_at: Timestamp = None
    inserted_at: Timestamp = None


class KitItem(PulpoRecord):
    id: int | None = None
    kit_id: int | None = None
    product_id: int | None = None
    quantity: int | None = None


class Kit(PulpoRecord):
    id: int | None = None
    name: str | None = None
    product_id: int | None = None
    active: bool | None = None
    items: list[KitItem] = Field(default_factory=list)
    updated_at: Timestamp = None
    inserted_at: Timestamp = None


class AddressDetail(PulpoRecord):
    street: str | None = None
    house_nr: str | None = None
    street2: str | None = None
    zip: str | None = None
    city: str | None = None
    state: str | None = None
    country: str | None = None
    country_alpha2: str | None = None
    country_code: str | None = None
    email: str | None = None
    additional_info: str | None = None
    post_number: str | None = None


class Address(PulpoRecord):
    name: str | None = None
    name2: str | None = None
    company_name: str | None = None
    phone_number: str | None = None
    address: AddressDetail | None = None


class SalesItem(WithAttributes):
    id: int | None = None
    product_id: int | None = None
    quantity: int | None = None
    fulfilled_quantity: int | None = None
    line_order_id: StrId = None
    state: str | None = None
    notes: str | None = None


class SalesOrder(WithAttributes):
    id: int | None = None
    order_num: StrId = None
    external_order_num: StrId = None
    state: str | None = None
    warehouse_id: int | None = None
    merchant_id: int | None = None
    third_party_id: int | None = None
    shipping_method_id: int | None = None
    ship_to: Address | None = None
    items: list[SalesItem] = Field(default_factory=list)
    notes: str | None = None
    updated_at: Timestamp = None
    inserted_at: Timestamp = None


class ThirdParty(WithAttributes):
    """A customer (`third_type` C) or supplier (S); `erp_id` is the key an ERP finds it by."""

    id: int | None = None
    name: str | None = None
    third_type: str | None = None
    identifier_type: str | None = None
    identifier_number: StrId = None
    erp_id: StrId = None
    erp_code: StrId = None
    email: str | None = None
    active: bool | None = None
    tenant_id: int | None = None
    merchant_id: int | None = None
    updated_at: Timestamp = None
    inserted_at: Timestamp = None


class PackingItem(PulpoRecord):
    id: int | None = None
    product_id: int | None = None
    requested_quantity: int | None = None
    packed_quantity: int | None = None


class PackingOrder(PulpoRecord):
    id: int | None = None
    sales_order_id: int | None = None
    sales_order_ref: str | None = None
    fulfillment_order_id: int | None = None
    sequence_number: StrId = None
    state: str | None = None
    warehouse_id: int | None = None
    items: list[PackingItem] = Field(default_factory=list)
    start_date: Timestamp = None
    end_date: Timestamp = None
    updated_at: Timestamp = None
    inserted_at: Timestamp = None


class PackingBoxItem(WithAttributes):
    id: int | None = None
    product_id: int | None = None
    quantity: int | None = None
    line_order_id: StrId = None


class PackingBox(WithAttributes):
    id: int | None = None
    packing_order_id: int | None = None
    box_number: int | None = None
    name: str | None = None
    state: str | None = None
    length: float | None = None
    width: float | None = None
    height: float | None = None
    weight: float | None = None
    items: list[PackingBoxItem] = Field(default_factory=list)
    loaded_shipping_box_id: int | None = None
    updated_at: Timestamp = None
    inserted_at: Timestamp = None


class ShipmentTracking(WithAttributes):
    id: int | None = None
    packing_box_id: int | None = None
    carrier_code: str | None = None
    tracking_code: str | None = None
    tracking_url: str | None = None
    status: str | None = None
    error_message: str | None = None
    requires_attention: bool | None = None
    printed: bool | None = None
    shipment_cost: float | None = None
    updated_at: Timestamp = None
    inserted_at: Timestamp = None


class StockSummary(PulpoRecord):
    """Stock per product (spec types `product_id` as a string; it is an id, so it is parsed as int)."""

    product_id: int | None = None
    sku: str | None = None
    name: str | None = None
    total: int | None = None
    available: int | None = None
    unavailable: int | None = None
    rejected: int | None = None
    last_movement: Timestamp = None


class Availability(PulpoRecord):
    product_id: int | None = None
    available_quantity: int | None = None
    reception_quantity: int | None = None
    return_quantity: int | None = None


class ShippingMethod(PulpoRecord):
    id: int | None = None
    name: str | None = None
    carrier: str | None = None
    service: str | None = None
    fetch_label: bool | None = None
    merchant_id: int | None = None


User.model_rebuild()


# --------------------------------------------------------------------------------------------------
# Request payloads: coerce to the spec's wire types; unknown (spec) fields pass through unchanged.


class PulpoPayload(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_wire(self) -> dict[str, Any]:
        """The JSON body: unset and None fields are left out (PULPO treats null as 'clear')."""
        return self.model_dump(mode="json", exclude_none=True)


class ProductPayload(PulpoPayload):
    sku: str | None = None
    name: str | None = None
    description: str | None = None
    article_number: StrId = None
    barcodes: list[Annotated[str, BeforeValidator(_as_str)]] | None = None
    active: bool | None = None
    weight: float | None = None
    height: float | None = None
    length: float | None = None
    width: float | None = None
    hs_code: StrId = None
    origin_country: str | None = None
    merchant_id: int | None = None
    attributes: JsonText = None


class ProductUpdatePayload(ProductPayload):
    """A bulk update row: PULPO identifies the product by `id`."""

    id: int | None = None


class KitItemPayload(PulpoPayload):
    product_id: int
    quantity: int


class KitPayload(PulpoPayload):
    """Spec v4.6.50 gives POST /inventory/kits no body schema; fields follow the `Kit` record."""

    name: str | None = None
    product_id: int | None = None
    active: bool | None = None
    items: list[KitItemPayload] | None = None


class AddressDetailPayload(PulpoPayload):
    street: str | None = None
    house_nr: StrId = None
    street2: str | None = None
    zip: StrId = None
    city: str | None = None
    state: str | None = None
    country: str | None = None
    country_alpha2: str | None = None
    email: str | None = None
    additional_info: str | None = None


class AddressPayload(PulpoPayload):
    name: str | None = None
    name2: str | None = None
    company_name: str | None = None
    phone_number: StrId = None
    address: AddressDetailPayload | None = None


class SalesItemPayload(PulpoPayload):
    product_id: int
    quantity: int
    line_order_id: StrId = None
    notes: str | None = None
    attributes: JsonText = None


class SalesOrderPayload(PulpoPayload):
    order_num: StrId = None
    external_order_num: StrId = None
    warehouse_id: int | None = None
    merchant_id: int | None = None
    third_party_id: int | None = None
    shipping_method_id: int | None = None
    ship_to: AddressPayload | None = None
    items: list[SalesItemPayload] | None = None
    notes: str | None = None
    attributes: JsonText = None


class ThirdPartyPayload(PulpoPayload):
    """Spec `ThirdParty`: identifier_type, identifier_number, name, third_type and tenant_id required."""

    name: str | None = None
    third_type: str | None = None
    identifier_type: str | None = None
    identifier_number: StrId = None
    erp_id: StrId = None
    erp_code: StrId = None
    email: str | None = None
    active: bool | None = None
    tenant_id: int | None = None
    merchant_id: int | None = None
    attributes: JsonText = None


class ShipmentTrackingPayload(PulpoPayload):
    carrier_code: str | None = None
    tracking_code: StrId = None
    tracking_url: str | None = None
    status: str | None = None
    error_message: str | None = None
    shipment_cost: float | None = None
    attributes: JsonText = None


class AttachmentPayload(PulpoPayload):
    """Spec `AttachmentRequest` (filename, path and content_type required; type is 'label' or 'photo')."""

    filename: str
    path: str
    content_type: str
    type: str | None = "label"


def wire(payload: PulpoPayload | Mapping[str, Any], model: type[PulpoPayload]) -> dict[str, Any]:
    """Validate a payload (model or mapping) against `model` and return its JSON body."""
    if not isinstance(payload, model):
        data = payload.model_dump(exclude_none=True) if isinstance(payload, BaseModel) else dict(payload)
        payload = model.model_validate(data)
    return payload.to_wire()


# --------------------------------------------------------------------------------------------------
# Bulk results


@dataclass(frozen=True)
class BulkItemOk:
    key: str      # the input key (sku or order_num)
    id: int | None


@dataclass(frozen=True)
class BulkItemFailure:
    key: str
    reason: str
    field_errors: dict[str, str] = field(default_factory=dict)


@dataclass
class BulkResult:
    """Outcome of a bulk call per input item: PULPO continues past failures, so both lists may be set."""

    ok: list[BulkItemOk] = field(default_factory=list)
    failed: list[BulkItemFailure] = field(default_factory=list)

    @property
    def all_ok(self) -> bool:
        return not self.failed

    def ids_by_key(self) -> dict[str, int | None]:
        return {item.key: item.id for item in self.ok}
