"""Pydantic models of the Billbee API objects the integration reads and writes.

Field names are PascalCase exactly as Billbee sends them (shipping providers and label dimensions use
lower-case keys, as Billbee does there). Response models keep unknown fields (`extra="allow"`) because
the live API returns more than any published spec; request models forbid them, so a typo such as
`SKU` for `Sku` fails here instead of being silently ignored by Billbee.

Ids are `Int64`: a plain int that refuses floats, because Billbee ids reach 17 digits (> 2**53) and a
float would already have lost digits. Quantities, prices and dimensions are floats (Billbee: double).
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    StringConstraints,
    model_validator,
)

# --------------------------------------------------------------------------------------------------
# Dates


def format_billbee_datetime(value: datetime) -> str:
    """ISO-8601 in UTC with an explicit offset (`2024-05-01T10:00:00+00:00`); naive datetimes are refused.

    Converting to UTC is deliberate: responses are read as UTC (see `parse_billbee_datetime`), so UTC is
    right whether Billbee honours the offset or reads the value as UTC.
    """
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} has no time zone; pass an aware datetime")
    return value.astimezone(UTC).isoformat()


_FRACTION = re.compile(r"(\.\d{6})\d+")
# ASP.NET's JSON date, which Billbee still writes in places: milliseconds since the epoch (UTC), optionally
# followed by the writer's offset (display only), sometimes with escaped slashes.
_ASPNET_DATE = re.compile(r"^\\?/Date\((-?\d+)(?:[+-]\d{4})?\)\\?/$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_billbee_datetime(value: str | datetime) -> datetime:
    """Parse a Billbee timestamp leniently and return an aware datetime.

    Accepts `Z`, explicit offsets, no offset, fractional seconds of any length (.NET writes seven
    digits), a space instead of `T`, and ASP.NET's `/Date(1700000000000)/`. A value without an offset
    is taken as UTC: Billbee's published response fixtures carry `Z`/`+00:00`, .NET writes UTC values
    without a zone when their kind is unspecified, and UTC does not depend on the zone of the machine
    running the pipeline. Billbee does not document the zone (notes/billbee-api.md §4, §13.1), so
    incremental windows keep an overlap. `0001-01-01T00:00:00` (.NET's "never") is kept as it is.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        parsed = _parse_text(value)
    else:
        raise TypeError(f"expected an ISO-8601 string, got {type(value).__name__}")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=UTC)
    return _within_utc_range(parsed)


def _parse_text(value: str) -> datetime:
    text = value.strip()
    aspnet = _ASPNET_DATE.match(text)
    try:
        if aspnet:
            return _EPOCH + timedelta(milliseconds=int(aspnet.group(1)))
        if text[-1:] in {"Z", "z"}:
            text = text[:-1] + "+00:00"
        return datetime.fromisoformat(_FRACTION.sub(r"\1", text))
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"'{value}' is not a Billbee date-time (ISO-8601 or /Date(ms)/)") from exc


def _within_utc_range(value: datetime) -> datetime:
    """`value`, or the first/last representable UTC instant when its UTC time lies outside datetime's
    range (`0001-01-01T00:00:00+01:00` is 31 Dec of year 0 in UTC): such dates mean "never" or "always"
    in .NET, and every later step converts to UTC."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        edge = datetime.min if value.year == 1 else datetime.max
        return edge.replace(tzinfo=UTC)
    return value


def _lenient_datetime(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str | datetime):
        return parse_billbee_datetime(value)
    return value  # let pydantic report the type error


def _reject_float_id(value: Any) -> Any:
    if isinstance(value, bool | float):
        raise ValueError("Billbee ids must be integers (a float cannot hold 17-digit ids exactly)")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


Int64 = Annotated[int, BeforeValidator(_reject_float_id)]
"""A Billbee id: int64, never a float."""

BillbeeDateTime = Annotated[
    datetime, BeforeValidator(_lenient_datetime), PlainSerializer(format_billbee_datetime, when_used="json")
]
"""A timestamp from Billbee, parsed leniently into an aware datetime."""


def _format_optional(value: datetime | None) -> str | None:
    return None if value is None else format_billbee_datetime(value)


OptionalDateTime = Annotated[
    datetime | None, BeforeValidator(_lenient_datetime), PlainSerializer(_format_optional, when_used="json")
]
"""An optional Billbee timestamp: null and "" both mean "not set"."""

OutgoingDateTime = Annotated[AwareDatetime, PlainSerializer(format_billbee_datetime, when_used="json")]
"""A timestamp we send: naive datetimes are refused when the model is built."""


class BillbeeModel(BaseModel):
    """Base of the response models: tolerant of unknown fields and of numbers in string fields."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, coerce_numbers_to_str=True)


class BillbeeRequest(BaseModel):
    """Base of the request models: unknown fields are an error (they would be dropped by Billbee)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON body: only the fields that are set (None means "not sent")."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------------------------------
# Envelope and paging


class Paging(BillbeeModel):
    Page: int | None = None
    TotalPages: int | None = None
    TotalRows: int | None = None
    PageSize: int | None = None


# --------------------------------------------------------------------------------------------------
# Products


class MultiLanguageString(BillbeeModel):
    Text: str | None = None
    LanguageCode: str | None = None


def pick_text(texts: list[MultiLanguageString] | None,
              languages: tuple[str, ...] = ("de", "en")) -> str | None:
    """The text in the first preferred language present, else the first non-empty text."""
    candidates = [t for t in texts or [] if t.Text]
    for language in languages:
        for text in candidates:
            if (text.LanguageCode or "").lower() == language.lower():
                return text.Text
    return candidates[0].Text if candidates else None


class BomItem(BillbeeModel):
    """One component of a bundle (`BomSubArticleApiModel`)."""

    Amount: float | None = None
    ArticleId: Int64 | None = None
    SKU: str | None = None


class ProductStock(BillbeeModel):
    """Stock of a product in one stock location (`StockArticleApiModel`)."""

    Name: str | None = None
    StockId: Int64 | None = None
    StockCurrent: float | None = None
    StockCurrentIsCalculated: bool | None = None
    StockWarning: float | None = None
    StockCode: str | None = None
    UnfulfilledAmount: float | None = None
    StockDesired: float | None = None


class ProductImage(BillbeeModel):
    Id: Int64 | None = None
    Url: str | None = None
    ThumbUrl: str | None = None
    Position: int | None = None
    IsDefault: bool | None = None
    ArticleId: Int64 | None = None


class Product(BillbeeModel):
    """A Billbee article (`ArticleApiModel` subset). Type 1 = product, 2 = bundle (BillOfMaterial)."""

    Id: Int64
    SKU: str | None = None
    EAN: str | None = None
    Manufacturer: str | None = None
    Title: list[MultiLanguageString] | None = None
    Description: list[MultiLanguageString] | None = None
    ShortDescription: list[MultiLanguageString] | None = None
    InvoiceText: list[MultiLanguageString] | None = None
    Type: int | None = None
    BillOfMaterial: list[BomItem] | None = None
    Weight: int | float | None = None
    WeightNet: int | float | None = None
    LengthCm: float | None = None
    WidthCm: float | None = None
    HeightCm: float | None = None
    TaricNumber: str | None = None
    CountryOfOrigin: str | None = None
    IsDeactivated: bool | None = None
    IsDigital: bool | None = None
    StockCurrent: float | None = None
    StockWarning: float | None = None
    StockDesired: float | None = None
    StockCode: str | None = None
    Stocks: list[ProductStock] | None = None
    Unit: int | None = None
    UnitsPerItem: float | None = None
    Price: float | None = None
    CostPrice: float | None = None
    VatIndex: int | None = None
    ShippingProductId: Int64 | None = None
    Images: list[ProductImage] | None = None
    CustomFields: list[dict[str, Any]] | None = None
    Sources: list[dict[str, Any]] | None = None

    def title(self, languages: tuple[str, ...] = ("de", "en")) -> str | None:
        return pick_text(self.Title, languages)

    def description(self, languages: tuple[str, ...] = ("de", "en")) -> str | None:
        return pick_text(self.Description, languages)


# --------------------------------------------------------------------------------------------------
# Orders


class Address(BillbeeModel):
    """Invoice or shipping address of an order (`OrderAddressApiModel`)."""

    BillbeeId: Int64 | None = None
    FirstName: str | None = None
    LastName: str | None = None
    Company: str | None = None
    NameAddition: str | None = None
    Street: str | None = None
    HouseNumber: str | None = None
    Line2: str | None = None
    Zip: str | None = None
    City: str | None = None
    State: str | None = None
    CountryISO2: str | None = None
    Country: str | None = None
    Email: str | None = None
    Phone: str | None = None


class SoldProduct(BillbeeModel):
    """The product of an order position. `Id` is the shop's (external) id; `BillbeeId` links to /products."""

    Id: str | None = None
    OldId: str | None = None
    BillbeeId: Int64 | None = None
    Title: str | None = None
    SKU: str | None = None
    SkuOrId: str | None = None
    EAN: str | None = None
    Weight: int | float | None = None
    IsDigital: bool | None = None
    TARICCode: str | None = None
    CountryOfOrigin: str | None = None
    Type: int | None = None
    Images: list[dict[str, Any]] | None = None


class OrderItemAttribute(BillbeeModel):
    Id: str | None = None
    Name: str | None = None
    Value: str | None = None
    Price: float | None = None


class OrderItem(BillbeeModel):
    """One order position. Coupons arrive as positions with `IsCoupon=True`."""

    BillbeeId: Int64 | None = None
    TransactionId: str | None = None
    Product: SoldProduct | None = None
    Quantity: float | None = None
    TotalPrice: float | None = None
    TaxAmount: float | None = None
    TaxIndex: int | None = None
    Discount: float | None = None
    Attributes: list[OrderItemAttribute] | None = None
    IsCoupon: bool | None = None
    DontAdjustStock: bool | None = None
    UnrebatedTotalPrice: float | None = None
    SerialNumber: str | None = None
    InvoiceSKU: str | None = None


class Shipment(BillbeeModel):
    """A shipment (tracking entry) of an order; also the item of GET /shipment/shipments."""

    BillbeeId: Int64 | None = None
    ShippingId: str | None = None
    Shipper: str | None = None
    Created: OptionalDateTime = None
    TrackingUrl: str | None = None
    ShippingProviderId: Int64 | None = None
    ShippingProviderProductId: Int64 | None = None
    ShippingCarrier: int | None = None
    ShipmentType: int | None = None


class Customer(BillbeeModel):
    Id: Int64 | None = None
    Name: str | None = None
    Email: str | None = None
    Tel1: str | None = None
    Tel2: str | None = None
    Number: int | None = None
    Type: int | None = None
    VatId: str | None = None
    LanguageId: int | None = None


_CustomerModel = Customer  # the Order field is also called `Customer`


class OrderUser(BillbeeModel):
    """Buyer or seller of an order on the sales channel."""

    Platform: str | None = None
    BillbeeShopName: str | None = None
    BillbeeShopId: Int64 | None = None
    Id: str | None = None
    Nick: str | None = None
    FirstName: str | None = None
    LastName: str | None = None
    FullName: str | None = None
    Email: str | None = None


class Order(BillbeeModel):
    """A Billbee order. `BillBeeOrderId` is the internal id every /orders/{id} path takes;
    `Id` and `OrderNumber` are the marketplace's strings."""

    BillBeeOrderId: Int64
    BillBeeParentOrderId: Int64 | None = None
    Id: str | None = None
    OrderNumber: str | None = None
    State: int | None = None
    CreatedAt: BillbeeDateTime
    ConfirmedAt: OptionalDateTime = None
    PayedAt: OptionalDateTime = None
    ShippedAt: OptionalDateTime = None
    UpdatedAt: OptionalDateTime = None
    LastModifiedAt: OptionalDateTime = None
    ArchivedAt: OptionalDateTime = None
    InvoiceAddress: Address | None = None
    ShippingAddress: Address | None = None
    OrderItems: list[OrderItem] | None = None
    ShippingIds: list[Shipment] | None = None
    ShippingProviderId: Int64 | None = None
    ShippingProviderProductId: Int64 | None = None
    ShippingProviderName: str | None = None
    ShippingProviderProductName: str | None = None
    ShippingProfileId: str | None = None
    ShippingProfileName: str | None = None
    ShipWeightKg: float | None = None
    Customer: _CustomerModel | None = None
    Buyer: OrderUser | None = None
    Seller: OrderUser | None = None
    Tags: list[str] | None = None
    Currency: str | None = None
    TotalCost: float | None = None
    ShippingCost: float | None = None
    PaidAmount: float | None = None
    PaymentMethod: int | None = None
    VatMode: int | None = None
    LanguageCode: str | None = None
    SellerComment: str | None = None
    IsCancelationFor: str | None = None
    ApiAccountId: Int64 | None = None
    ApiAccountName: str | None = None
    DistributionCenter: str | None = None
    WebUrl: str | None = None


# --------------------------------------------------------------------------------------------------
# Shipping


class Dimensions(BillbeeRequest):
    """Package dimensions in cm; Billbee spells these keys in lower case."""

    length: float | None = None
    width: float | None = None
    height: float | None = None


class ShipWithLabelRequest(BillbeeRequest):
    """Body of POST /shipment/shipwithlabel. `OrderId` is the Billbee internal id (BillBeeOrderId)."""

    OrderId: Int64
    ProviderId: Int64
    ProductId: Int64
    ChangeStateToSend: bool | None = None
    PrinterName: str | None = None
    WeightInGram: int | None = None
    ShipDate: OutgoingDateTime | None = None
    ClientReference: str | None = None
    Dimension: Dimensions | None = None


class ShipWithLabelResult(BillbeeModel):
    """Answer of shipwithlabel: tracking number and the label as base64 PDF."""

    OrderId: Int64 | None = None
    OrderReference: str | None = None
    ShippingId: str | None = None
    TrackingUrl: str | None = None
    LabelDataPdf: str | None = Field(default=None, repr=False)
    ExportDocsPdf: str | None = Field(default=None, repr=False)
    Carrier: str | None = None
    ShippingDate: OptionalDateTime = None

    def label_pdf(self) -> bytes | None:
        return base64.b64decode(self.LabelDataPdf) if self.LabelDataPdf else None

    def export_docs_pdf(self) -> bytes | None:
        return base64.b64decode(self.ExportDocsPdf) if self.ExportDocsPdf else None


class AddShipmentRequest(BillbeeRequest):
    """Body of POST /orders/{id}/shipment. `OrderId` is optional and is the order number *at the carrier*
    (a string), not the Billbee id: the Billbee id goes in the path. ShipmentType 0 = shipment, 1 = return."""

    ShippingId: str
    OrderId: str | None = None
    Comment: str | None = None
    ShippingProviderId: Int64 | None = None
    ShippingProviderProductId: Int64 | None = None
    CarrierId: int | None = None
    ShipmentType: int | None = None


class ShippingProduct(BillbeeModel):
    id: Int64 = Field(validation_alias=AliasChoices("id", "Id"))
    displayName: str | None = Field(default=None, validation_alias=AliasChoices("displayName", "DisplayName"))
    productName: str | None = Field(default=None, validation_alias=AliasChoices("productName", "ProductName"))


class ShippingProvider(BillbeeModel):
    """A shipping provider of the account with its products (Billbee uses lower-case keys here)."""

    id: Int64 = Field(validation_alias=AliasChoices("id", "Id"))
    name: str | None = Field(default=None, validation_alias=AliasChoices("name", "Name"))
    products: list[ShippingProduct] = Field(default_factory=list,
                                            validation_alias=AliasChoices("products", "Products"))


class ShippingCarrier(BillbeeModel):
    Id: int = Field(validation_alias=AliasChoices("Id", "id"))
    Name: str | None = Field(default=None, validation_alias=AliasChoices("Name", "name"))


# --------------------------------------------------------------------------------------------------
# Stock


class StockLocation(BillbeeModel):
    """A stock location (warehouse) of the account, from GET /products/stocks."""

    Id: Int64
    Name: str | None = None
    Description: str | None = None
    IsDefault: bool | None = None


class StockUpdate(BillbeeRequest):
    """One row of updatestock(multiple). `NewQuantity` is the new *absolute* stock; Billbee ignores deltas.

    `AutosubtractReservedAmount=True` makes Billbee subtract the open (reserved) quantity, which is right
    when the warehouse reports physical on-hand stock that still contains unshipped order units.
    """

    Sku: str | None = None
    BillbeeId: Int64 | None = None
    StockId: Int64 | None = None
    Reason: str | None = None
    NewQuantity: float
    ForceSendStockToShops: bool | None = None
    AutosubtractReservedAmount: bool | None = None

    @model_validator(mode="after")
    def _identifies_product(self) -> StockUpdate:
        if not (self.Sku and self.Sku.strip()) and self.BillbeeId is None:
            raise ValueError("a stock update needs a Sku or a BillbeeId")
        return self


class StockRowResult(BaseModel):
    """Outcome of one stock row. Billbee answers HTTP 200 with one envelope per row, so a row can fail
    while the others succeed; `ok` is False and `error_code`/`error_message` say why."""

    sku: str | None
    billbee_id: int | None = None
    stock_id: int | None = None
    ok: bool
    error_code: int | str | None = None
    error_message: str | None = None
    old_stock: float | None = None
    current_stock: float | None = None
    unfulfilled_amount: float | None = None
    message: str | None = None


# --------------------------------------------------------------------------------------------------
# Lean product pages: the fast path of a full product scan

# Ids stay exact: a JSON integer (never a float: 17 digits do not survive one) or a string of digits.
LeanId = Annotated[int, Strict()] | Annotated[str, Strict(), StringConstraints(strip_whitespace=True,
                                                                             pattern=r"^\d+$")]


class _Lean(BaseModel):
    """Only the fields a consumer names; everything else in Billbee's answer is skipped unread."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)


class LeanText(_Lean):
    Text: str | None = None
    LanguageCode: str | None = None


class LeanBomItem(_Lean):
    Amount: float | None = None
    ArticleId: LeanId | None = None
    SKU: str | None = None


class LeanProduct(_Lean):
    """The product fields the products flow transfers (a subset of `Product`, same names)."""

    Id: LeanId
    SKU: str | None = None
    EAN: str | None = None
    Title: list[LeanText] | None = None
    Type: int | None = None
    BillOfMaterial: list[LeanBomItem] | None = None
    Weight: int | float | None = None
    LengthCm: float | None = None
    WidthCm: float | None = None
    HeightCm: float | None = None
    TaricNumber: str | None = None
    CountryOfOrigin: str | None = None
    IsDeactivated: bool | None = None


class _LeanProductEnvelope(_Lean):
    Data: list[LeanProduct] | None = None
    paging: Paging | None = Field(None, alias="Paging")
    ErrorCode: Any = None
    ErrorMessage: Any = None
    ErrorDescription: Any = None
