"""Hypothesis strategies for raw API records, as Billbee and PULPO send them, with edge values.

Each strategy builds the JSON of one record from the official spec's schema (field names and types of
`ArticleApiModel`, `Order`, `OrderItem`, `SoldProduct`, `OrderAddressApiModel` in
`billbee-api-swagger2.yaml`; `StockSummary`, `Availability`, `PackingOrder`, `PackingItem`,
`PackingBox`, `PackingBoxItem`, `ShipmentTracking` in PULPO's swagger 4.6.50), mixing valid values
with the edge values real accounts produce: missing and null fields, empty and very long strings,
emoji, 17-digit ids, negative and fractional quantities, unknown states, SKUs shared by several
records, and every date format Billbee writes. Values keep the spec's JSON *types* (a number field
holds a number or null): a value of the wrong type is not a bad record but a broken reply, which the
clients refuse as a whole (see `spec_violations`).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# --------------------------------------------------------------------------------------------------
# Scalars

ID17 = st.integers(min_value=10**16, max_value=2**63 - 1)        # Billbee ids reach 17 digits (> 2**53)
SMALL_ID = st.integers(min_value=1, max_value=10**6)
BILLBEE_ID = st.one_of(ID17, SMALL_ID)
PULPO_ID = st.integers(min_value=1, max_value=2**31 - 1)

EMOJI = st.sampled_from(["🐙", "📦🚚", "👩‍👩‍👧‍👦", "🇩🇪", "ß" * 3, "Straße ❤️", "\u202etxet", "日本語"])
LONG_TEXT = st.sampled_from(["x" * 5000, "Ä" * 1000, "🐙" * 700, "word " * 900])
PRINTABLE = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
NASTY_TEXT = st.one_of(st.just(""), st.just("   "), PRINTABLE, EMOJI, LONG_TEXT)
OPTIONAL_TEXT = st.one_of(st.none(), NASTY_TEXT)

# Billbee writes dates as ISO-8601 with and without zone, with 7 fractional digits (.NET ticks),
# in the old ASP.NET JSON form, and 0001-01-01 (DateTime.MinValue) for "never"; null and "" also occur.
BILLBEE_DATES = st.sampled_from([
    "2026-11-27T10:00:00", "2026-11-27T10:00:00Z", "2026-11-27T10:00:00+01:00", "2026-11-27T10:00:00.1234567",
    "2026-11-27T10:00:00.1234567Z", "2026-11-27T10:00:00.1234567+01:00", "2026-11-27T10:00:00.123",
    "/Date(1700000000000)/", "/Date(1700000000000+0100)/", "/Date(-62135596800000)/", "0001-01-01T00:00:00",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.9999999", "9999-12-31T23:59:59-01:00",
    "2026-03-29T02:30:00+02:00", "2026-11-27 10:00:00",
])
OPTIONAL_DATE = st.one_of(st.none(), st.just(""), BILLBEE_DATES)

# A small pool, so that batches share SKUs; plus the SKUs that cannot link anything.
SKU_POOL = st.sampled_from(["A-1", "A-1 ", " A-1", "B-2", "sku-🐙", "C/3", "ÄÖÜ-4", "12345678901234567"])
SKUS = st.one_of(SKU_POOL, SKU_POOL, st.none(), st.just(""), st.just("  "), EMOJI, LONG_TEXT,
                 PRINTABLE.filter(lambda s: s.strip()))

QUANTITIES = st.one_of(
    st.integers(min_value=1, max_value=20).map(float),      # Billbee sends doubles: 2.0
    st.integers(min_value=1, max_value=20).map(float),
    st.integers(min_value=1, max_value=5),
    st.sampled_from([0, 0.0, -1.0, -0.5, 0.5, 1.5, 2.25, 1e-9, 10**9, 1e20, 3.0000000001, None]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
)
MEASURES = st.one_of(st.none(), st.sampled_from([0, 0.0, -1, -0.5, 0.001, 1e9]),
                     st.integers(0, 50_000), st.floats(0, 1e4, allow_nan=False, allow_infinity=False))
ORDER_STATES = st.one_of(st.integers(1, 17), st.sampled_from([3, 3, 0, 18, 99, -1, 2**31 - 1, None]))


def maybe_missing(fields: dict[str, Any], draw: st.DrawFn, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Drop some optional keys (a missing field), keep the required ones."""
    optional = sorted(k for k in fields if k not in required)
    dropped = draw(st.sets(st.sampled_from(optional), max_size=2)) if optional else set()
    return {k: v for k, v in fields.items() if k not in dropped}


# --------------------------------------------------------------------------------------------------
# Billbee


@st.composite
def multilanguage(draw: st.DrawFn) -> list[dict[str, Any]] | None:
    texts = draw(st.lists(st.fixed_dictionaries({
        "Text": OPTIONAL_TEXT, "LanguageCode": st.one_of(st.none(), st.sampled_from(["DE", "de", "EN", "fr", ""]))}),
        max_size=3))
    return draw(st.one_of(st.just(texts), st.none()))


@st.composite
def bom_item(draw: st.DrawFn) -> dict[str, Any]:
    return maybe_missing({"Amount": draw(QUANTITIES), "ArticleId": draw(st.one_of(st.none(), BILLBEE_ID)),
                          "SKU": draw(SKUS)}, draw)


@st.composite
def billbee_product(draw: st.DrawFn, product_id: int | None = None) -> dict[str, Any]:
    """`ArticleApiModel` as GET /products answers it."""
    product_type = draw(st.one_of(st.sampled_from([1, 1, 2]), st.sampled_from([0, 3, 99]), st.none()))
    fields = {
        "Id": product_id if product_id is not None else draw(BILLBEE_ID),
        "SKU": draw(SKUS),
        "EAN": draw(st.one_of(st.none(), st.just(""), st.sampled_from(["4006381333931", "0000000000000"]),
                              NASTY_TEXT)),
        "Manufacturer": draw(OPTIONAL_TEXT),
        "Title": draw(multilanguage()),
        "Description": draw(multilanguage()),
        "Type": product_type,
        "BillOfMaterial": draw(st.one_of(st.none(), st.lists(bom_item(), max_size=3))),
        "Weight": draw(st.one_of(st.none(), st.integers(-5, 100_000), st.sampled_from([0, -1, 2**31 - 1]))),
        "WeightNet": draw(st.one_of(st.none(), st.integers(-5, 100_000))),
        "LengthCm": draw(MEASURES),
        "WidthCm": draw(MEASURES),
        "HeightCm": draw(MEASURES),
        "TaricNumber": draw(OPTIONAL_TEXT),
        "CountryOfOrigin": draw(st.one_of(st.none(), st.sampled_from(["DE", "de", " at ", "", "XX"]), EMOJI)),
        "IsDeactivated": draw(st.one_of(st.none(), st.booleans())),
        "IsDigital": draw(st.booleans()),
        "StockCurrent": draw(st.one_of(st.none(), QUANTITIES)),
        "Price": draw(st.one_of(st.none(), st.floats(-10, 1e6, allow_nan=False))),
        "VatIndex": 1, "Vat1Rate": 19.0, "Vat2Rate": 7.0, "IsCustomizable": False,
    }
    return maybe_missing(fields, draw, required=("Id",))


@st.composite
def product_batches(draw: st.DrawFn, max_size: int = 12) -> list[dict[str, Any]]:
    """A page of products with distinct ids (SKUs may repeat: that is the point)."""
    ids = draw(st.lists(BILLBEE_ID, min_size=1, max_size=max_size, unique=True))
    return [draw(billbee_product(product_id=i)) for i in ids]


@st.composite
def billbee_address(draw: st.DrawFn) -> dict[str, Any] | None:
    """`OrderAddressApiModel`."""
    if draw(st.integers(0, 9)) == 0:
        return None
    if draw(st.booleans()):  # a plain valid address half of the time
        return {"FirstName": "Zoë", "LastName": draw(NASTY_TEXT), "Street": draw(st.sampled_from(
            ["Hauptstraße", "Äußere Weißenburger Straße 🦄", "x" * 300])), "HouseNumber": "7½", "Zip": "81667",
            "City": "München", "CountryISO2": "DE"}
    fields = {
        "BillbeeId": draw(st.one_of(st.none(), BILLBEE_ID)),
        "FirstName": draw(OPTIONAL_TEXT), "LastName": draw(OPTIONAL_TEXT), "Company": draw(OPTIONAL_TEXT),
        "NameAddition": draw(OPTIONAL_TEXT),
        "Street": draw(st.one_of(st.sampled_from(["Hauptstraße", "Rue de l'Église"]), OPTIONAL_TEXT)),
        "HouseNumber": draw(st.one_of(st.sampled_from(["1", "12a", "0"]), OPTIONAL_TEXT)),
        "Line2": draw(OPTIONAL_TEXT), "Zip": draw(st.one_of(st.sampled_from(["10115", "01067"]), OPTIONAL_TEXT)),
        "City": draw(OPTIONAL_TEXT), "State": draw(OPTIONAL_TEXT),
        "CountryISO2": draw(st.one_of(st.sampled_from(["DE", "AT", "de", ""]), st.none())),
        "Country": draw(OPTIONAL_TEXT), "Email": draw(OPTIONAL_TEXT), "Phone": draw(OPTIONAL_TEXT),
    }
    return maybe_missing(fields, draw)


@st.composite
def sold_product(draw: st.DrawFn) -> dict[str, Any] | None:
    """`SoldProduct`: the product of an order position (`Id` is the shop's string id)."""
    if draw(st.integers(0, 14)) == 0:
        return None
    fields = {
        "Id": draw(st.one_of(st.none(), NASTY_TEXT)),
        "BillbeeId": draw(st.one_of(st.none(), BILLBEE_ID)),
        "Title": draw(OPTIONAL_TEXT),
        "SKU": draw(st.one_of(SKU_POOL, SKUS)),
        "EAN": draw(OPTIONAL_TEXT),
        "Weight": draw(st.one_of(st.none(), st.integers(-5, 50_000), st.just(0))),
        "IsDigital": draw(st.sampled_from([None, False, False, True])),
        "Type": draw(st.one_of(st.none(), st.sampled_from([1, 2, 0, 7]))),
    }
    return maybe_missing(fields, draw)


@st.composite
def order_item(draw: st.DrawFn) -> dict[str, Any]:
    """`OrderItem`: one position; coupons are positions with `IsCoupon`."""
    fields = {
        "BillbeeId": draw(st.one_of(st.none(), BILLBEE_ID)),
        "TransactionId": draw(OPTIONAL_TEXT),
        "Product": draw(sold_product()),
        "Quantity": draw(QUANTITIES),
        "TotalPrice": draw(st.one_of(st.none(), st.floats(-100, 1e5, allow_nan=False))),
        "IsCoupon": draw(st.sampled_from([None, False, False, True])),
        "DontAdjustStock": draw(st.one_of(st.none(), st.booleans())),
        "InvoiceSKU": draw(OPTIONAL_TEXT),
    }
    return maybe_missing(fields, draw)


@st.composite
def billbee_order(draw: st.DrawFn, order_id: int | None = None) -> dict[str, Any]:
    """`Order` as GET /orders answers it (required by the spec: `CreatedAt`; Billbee always sends the id)."""
    fields = {
        "BillBeeOrderId": order_id if order_id is not None else draw(BILLBEE_ID),
        "Id": draw(OPTIONAL_TEXT),
        "OrderNumber": draw(st.one_of(st.sampled_from(["303-1234567-1234567", "12345678901234567"]), OPTIONAL_TEXT)),
        "State": draw(ORDER_STATES),
        "CreatedAt": draw(BILLBEE_DATES),
        "PayedAt": draw(OPTIONAL_DATE),
        "LastModifiedAt": draw(OPTIONAL_DATE),
        "ShippedAt": draw(OPTIONAL_DATE),
        "InvoiceAddress": draw(billbee_address()),
        "ShippingAddress": draw(billbee_address()),
        "OrderItems": draw(st.one_of(st.lists(order_item(), min_size=1, max_size=4), st.sampled_from([None, []]))),
        "Customer": draw(st.one_of(st.none(), st.fixed_dictionaries({
            "Id": st.one_of(st.none(), BILLBEE_ID), "Name": OPTIONAL_TEXT, "Email": OPTIONAL_TEXT,
            "Number": st.one_of(st.none(), st.integers(0, 10**9))}))),
        "ShippingProviderId": draw(st.one_of(st.none(), BILLBEE_ID)),
        "ShippingProviderProductId": draw(st.one_of(st.none(), BILLBEE_ID)),
        "ShippingProviderName": draw(OPTIONAL_TEXT),
        "ShippingProviderProductName": draw(OPTIONAL_TEXT),
        "ApiAccountName": draw(OPTIONAL_TEXT),
        "Tags": draw(st.one_of(st.none(), st.lists(NASTY_TEXT, max_size=2))),
        "Currency": draw(st.one_of(st.none(), st.sampled_from(["EUR", "CHF", ""]))),
        "TotalCost": draw(st.one_of(st.none(), st.floats(-10, 1e6, allow_nan=False))),
    }
    return maybe_missing(fields, draw, required=("BillBeeOrderId", "CreatedAt"))


# --------------------------------------------------------------------------------------------------
# PULPO

PULPO_TIMESTAMPS = st.one_of(st.none(), st.just(""), st.sampled_from([
    "2026-11-27T10:00:00Z", "2026-11-27T10:00:00.123456Z", "2026-11-27 10:00:00", "2026-11-27T10:00:00+01:00",
    "not a date"]))
PULPO_QUANTITY = st.one_of(st.none(), st.integers(-10, 10_000), st.sampled_from([0, -1, 2**31 - 1]))


@st.composite
def stock_summary_row(draw: st.DrawFn) -> dict[str, Any]:
    """`StockSummary` of GET /inventory/stocks/summary (the spec types `product_id` as a string)."""
    product_id = draw(PULPO_ID)
    fields = {
        "product_id": draw(st.sampled_from([str(product_id), product_id])),
        "sku": draw(SKUS), "name": draw(OPTIONAL_TEXT),
        "total": draw(PULPO_QUANTITY), "available": draw(PULPO_QUANTITY),
        "unavailable": draw(PULPO_QUANTITY), "rejected": draw(PULPO_QUANTITY),
        "last_movement": draw(PULPO_TIMESTAMPS),
    }
    return maybe_missing(fields, draw)


@st.composite
def availability_row(draw: st.DrawFn) -> dict[str, Any]:
    product_id = draw(PULPO_ID)
    return maybe_missing({"product_id": draw(st.sampled_from([str(product_id), product_id])),
                          "available_quantity": draw(PULPO_QUANTITY), "reception_quantity": draw(PULPO_QUANTITY),
                          "return_quantity": draw(PULPO_QUANTITY)}, draw)


@st.composite
def packing_order(draw: st.DrawFn) -> dict[str, Any]:
    """`PackingOrder` with its `PackingItem`s."""
    items = draw(st.lists(st.fixed_dictionaries({
        "id": PULPO_ID, "product_id": st.one_of(st.none(), PULPO_ID),
        "requested_quantity": PULPO_QUANTITY, "packed_quantity": PULPO_QUANTITY}), max_size=3))
    fields = {
        "id": draw(PULPO_ID), "sales_order_id": draw(st.one_of(st.none(), PULPO_ID)),
        "sales_order_ref": draw(OPTIONAL_TEXT), "sequence_number": draw(OPTIONAL_TEXT),
        "state": draw(st.one_of(st.none(), st.sampled_from(["finished", "queue", "cancelled", "🐙", ""]))),
        "warehouse_id": draw(st.one_of(st.none(), st.sampled_from([1, 2]))), "items": items,
        "start_date": draw(PULPO_TIMESTAMPS), "end_date": draw(PULPO_TIMESTAMPS), "updated_at": draw(PULPO_TIMESTAMPS),
    }
    return maybe_missing(fields, draw, required=("id",))


@st.composite
def packing_box(draw: st.DrawFn, packing_order_id: int | None = None) -> dict[str, Any]:
    """`PackingBox` with its `PackingBoxItem`s (weight in kg, sides in cm)."""
    items = draw(st.lists(st.fixed_dictionaries({
        "id": PULPO_ID, "product_id": st.one_of(st.none(), PULPO_ID), "quantity": PULPO_QUANTITY,
        "line_order_id": st.one_of(st.none(), st.just(""), BILLBEE_ID.map(str))}), max_size=3))
    fields = {
        "id": draw(PULPO_ID), "packing_order_id": packing_order_id or draw(PULPO_ID),
        "box_number": draw(st.one_of(st.none(), st.integers(-1, 20))), "name": draw(OPTIONAL_TEXT),
        "state": draw(st.one_of(st.none(), st.sampled_from(["closed", "open", "🐙"]))),
        "weight": draw(st.one_of(MEASURES, st.sampled_from([0.0004, 2.5]))),
        "length": draw(MEASURES), "width": draw(MEASURES), "height": draw(MEASURES),
        "items": items, "attributes": draw(st.one_of(st.none(), st.just(""), st.just("{not json"),
                                                      st.just('{"a": 1}'))),
    }
    return maybe_missing(fields, draw, required=("id",))


@st.composite
def shipment_tracking(draw: st.DrawFn, box_id: int | None = None) -> dict[str, Any]:
    """`ShipmentTracking` of a box, as a label service (Sendcloud, VCE) writes it."""
    fields = {
        "id": draw(PULPO_ID), "packing_box_id": box_id or draw(PULPO_ID),
        "carrier_code": draw(st.one_of(st.none(), st.sampled_from(["dhl", "DHL_express", "dpd_classic", "ups",
                                                                    "deutsche_post", "🐙", "", " "]), NASTY_TEXT)),
        "tracking_code": draw(st.one_of(st.none(), st.just(""), st.just("  "), st.sampled_from(
            ["00340434161094042557", "1Z999AA10123456784", "JJD0001", "12345678901234567"]), NASTY_TEXT)),
        "tracking_url": draw(OPTIONAL_TEXT), "status": draw(OPTIONAL_TEXT),
        "error_message": draw(st.one_of(st.none(), st.just(""), st.just("Address invalid: zip"), NASTY_TEXT)),
        "shipment_cost": draw(st.one_of(st.none(), st.floats(-1, 100, allow_nan=False))),
    }
    return maybe_missing(fields, draw)


# --------------------------------------------------------------------------------------------------
# Broken replies: a value of the wrong JSON type where the spec fixes one

WRONG_TYPES = st.sampled_from([1.5, "abc", [], {}, "🐙", "1e3"])


@st.composite
def spec_violations(draw: st.DrawFn, record: st.SearchStrategy[dict[str, Any]],
                    fields: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """A record with one typed field holding a value of another JSON type; returns it and the field."""
    raw = draw(record)
    name = draw(st.sampled_from(fields))
    raw[name] = draw(WRONG_TYPES)
    return raw, name
