"""Plain PULPO WMS client (no Dagster): `PulpoClient`, its typed records and the shared token cache."""

from billbee_pulpo_pipeline.clients.pulpo.client import SYSTEM, PulpoClient, bulk_result, parse_error_body
from billbee_pulpo_pipeline.clients.pulpo.models import (
    Address,
    AddressDetail,
    AttachmentPayload,
    Availability,
    BulkItemFailure,
    BulkItemOk,
    BulkResult,
    Kit,
    KitPayload,
    PackingBox,
    PackingOrder,
    Product,
    ProductPayload,
    ProductUpdatePayload,
    SalesItem,
    SalesItemPayload,
    SalesOrder,
    SalesOrderPayload,
    ShipmentTracking,
    ShipmentTrackingPayload,
    ShippingMethod,
    StockSummary,
    ThirdParty,
    ThirdPartyPayload,
    User,
    Warehouse,
    date_filter,
    format_pulpo_datetime,
    parse_attributes,
    parse_pulpo_datetime,
)
from billbee_pulpo_pipeline.clients.pulpo.token_cache import CachedToken, TokenCache

__all__ = [
    "SYSTEM", "Address", "AddressDetail", "AttachmentPayload", "Availability", "BulkItemFailure",
    "BulkItemOk", "BulkResult", "CachedToken", "Kit", "KitPayload", "PackingBox", "PackingOrder",
    "Product", "ProductPayload", "ProductUpdatePayload", "PulpoClient", "SalesItem", "SalesItemPayload",
    "SalesOrder", "SalesOrderPayload", "ShipmentTracking", "ShipmentTrackingPayload", "ShippingMethod",
    "StockSummary", "ThirdParty", "ThirdPartyPayload", "TokenCache", "User", "Warehouse", "bulk_result", "date_filter",
    "format_pulpo_datetime", "parse_attributes", "parse_error_body", "parse_pulpo_datetime",
]
