"""Billbee products → PULPO products and kits: pure functions, no I/O.

Field mapping (Billbee `ArticleApiModel` → PULPO `Product`):

- `sku` = Billbee `SKU`, the linkage key (trimmed). Products without one, or with a SKU another
  Billbee product already uses, cannot be linked and go to quarantine (`unlinkable_reason`).
- `name` = the title in the configured language (default German), else the first non-empty title.
  A product without any title is sent without a name and PULPO's "can't be blank" lands in
  quarantine: inventing a name would hide the gap from the merchant.
- `barcodes` = [EAN] (empty EANs are left out, so the list may be empty). PULPO's own barcodes are
  kept: an update sends the union of the PULPO product's barcodes and the Billbee EAN, without the
  EAN this flow sent before when Billbee's changed (`merged_barcodes`), or no `barcodes` at all when
  the Billbee EAN did not change. A product found in PULPO already holds our payload when its
  other fields match and the Billbee EAN is among its barcodes (`holds_payload`).
- `weight`: Billbee keeps grams, PULPO kilograms (PULPO's spec gives no unit; its UI, its own Billbee
  import and the sandbox use kg and cm), so grams / 1000, rounded to the gram. `length`/`width`/
  `height` = `LengthCm`/`WidthCm`/`HeightCm` (cm on both sides). Billbee shows 0 for "not set", so
  0 and empty values are left out of the payload and PULPO keeps what it has.
- `hs_code` = `TaricNumber`, `origin_country` = `CountryOfOrigin` (ISO 3166 alpha-2, upper case).
- `attributes` = the JSON *string* `{"billbee_id": "<17-digit id>"}` (PULPO types it as a string;
  the id is a string because it does not fit a float).
- `active` = not `IsDeactivated`.

Bundles (Billbee `Type` 2 with a `BillOfMaterial`) become a PULPO product *and* a PULPO kit of their
components (`bundles: kit`, the default), for tenants that assemble kits (sales orders with `bundles:
kit` name the kit; by default they ship a bundle as its components); `bundles: skip` leaves them out.
Kit quantities are whole numbers in PULPO, so a bill of material with a fractional amount is refused
here with a reason.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from billbee_pulpo_pipeline.clients.billbee.models import Product
from billbee_pulpo_pipeline.mapping.articles import BUNDLE_TYPE, _text

GRAMS_PER_PULPO_WEIGHT_UNIT = 1000  # PULPO weights are kilograms


def title(product: Any, language: str = "de") -> str | None:
    """The title in `language`, else the first non-empty one (Billbee titles are multilingual)."""
    texts = [t for t in (product.Title or []) if getattr(t, "Text", None)]
    for text in texts:
        if (getattr(text, "LanguageCode", None) or "").lower() == language.lower():
            return text.Text
    return texts[0].Text if texts else None


def product_fields(product: Product | Any, language: str = "de") -> dict[str, Any]:
    """The Billbee fields the product flow sends to PULPO; their hash decides 'changed'.

    Takes a `Product` or the client's `LeanProduct` (same field names)."""
    return {
        "billbee_id": str(product.Id),
        "sku": product.SKU,
        "ean": product.EAN,
        "title": title(product, language),
        "type": product.Type,
        "weight_g": product.Weight,
        "length_cm": product.LengthCm,
        "width_cm": product.WidthCm,
        "height_cm": product.HeightCm,
        "taric": product.TaricNumber,
        "country_of_origin": product.CountryOfOrigin,
        "deactivated": bool(product.IsDeactivated),
        "bill_of_material": [
            {"sku": b.SKU, "article_id": str(b.ArticleId) if b.ArticleId is not None else None, "amount": b.Amount}
            for b in (product.BillOfMaterial or [])
        ],
    }


def unlinkable_reason(fields: dict[str, Any], sku_owner: dict[str, str]) -> str | None:
    """Why a product cannot be linked to PULPO (SKU is the linkage key), or None.

    `sku_owner` maps each SKU seen so far to the Billbee id that claimed it first.
    """
    sku = (fields.get("sku") or "").strip()
    if not sku:
        return "product has no SKU in Billbee (the SKU links Billbee and PULPO): add one in Billbee"
    owner = sku_owner.get(sku)
    if owner is not None and owner != fields["billbee_id"]:
        return f"SKU '{sku}' is also used by Billbee product {owner}: SKUs must be unique"
    return None


# --------------------------------------------------------------------------------------------------
# PULPO payloads


def _measure(value: Any) -> float | None:
    """A positive, finite measure; Billbee's 0 means 'not set'."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) and number > 0 else None


def grams_to_pulpo_weight(grams: Any) -> float | None:
    """Billbee grams → PULPO kilograms (3 decimals: whole grams survive)."""
    value = _measure(grams)
    return round(value / GRAMS_PER_PULPO_WEIGHT_UNIT, 3) if value is not None else None


def billbee_attributes(billbee_id: str) -> str:
    """PULPO `attributes` (a JSON string) carrying the Billbee id as text."""
    return json.dumps({"billbee_id": str(billbee_id)}, separators=(",", ":"))


def pulpo_product_payload(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The PULPO product body for a snapshot record (`product_fields`); unset values are left out."""
    country = _text(fields.get("country_of_origin"))
    ean = _text(fields.get("ean"))
    payload: dict[str, Any] = {
        "sku": (fields.get("sku") or "").strip(),
        "name": _text(fields.get("title")),
        "barcodes": [ean] if ean else [],
        "weight": grams_to_pulpo_weight(fields.get("weight_g")),
        "length": _measure(fields.get("length_cm")),
        "width": _measure(fields.get("width_cm")),
        "height": _measure(fields.get("height_cm")),
        "hs_code": _text(fields.get("taric")),
        "origin_country": country.upper() if country else None,
        "attributes": billbee_attributes(fields["billbee_id"]),
        "active": not fields.get("deactivated", False),
    }
    return {key: value for key, value in payload.items() if value is not None}


def _content_hash(payload: Mapping[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


PRODUCT_KEYS = ("sku", "name", "barcodes", "weight", "length", "width", "height", "hs_code", "origin_country",
                "attributes", "active")


def _attributes_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    try:
        parsed = json.loads(value) if isinstance(value, str) and value else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _normalised(key: str, value: Any) -> Any:
    if key == "barcodes":
        codes = [c.get("code") if isinstance(c, Mapping) else c for c in value or []]
        return sorted(str(c) for c in codes if c)
    if key == "attributes":
        return _attributes_dict(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(float(value), 3)
    return value


def pulpo_fingerprint(values: Mapping[str, Any]) -> str:
    """Hash of the product fields this flow writes, normalised (barcode order, attribute JSON
    layout, 0.5 vs 0.50). Equal for a PULPO record and our payload exactly when the record already
    holds the payload: a product found in PULPO then needs no write."""
    projection = {key: _normalised(key, values[key]) for key in PRODUCT_KEYS if values.get(key) is not None}
    return _content_hash(projection)


def fingerprint_without_barcodes(values: Mapping[str, Any]) -> str:
    """`pulpo_fingerprint` of every written field but the barcodes (PULPO may hold more than ours)."""
    return pulpo_fingerprint({key: value for key, value in values.items() if key != "barcodes"})


def barcode_list(values: Iterable[Any] | None) -> list[str]:
    """Barcodes as plain, non-empty strings (PULPO's `{code: ...}` objects too), in their order, once each."""
    codes = ((v.get("code") or v.get("barcode")) if isinstance(v, Mapping) else v for v in values or [])
    texts = (str(code).strip() for code in codes if code is not None)
    return list(dict.fromkeys(text for text in texts if text))


def holds_payload(fingerprint: str, barcodes: Iterable[Any], payload: Mapping[str, Any]) -> bool:
    """Whether a PULPO product (its `fingerprint_without_barcodes` and barcodes) already holds `payload`:
    the same written fields, and every barcode of the payload among its own."""
    return (fingerprint == fingerprint_without_barcodes(payload)
            and set(barcode_list(payload.get("barcodes"))) <= set(barcode_list(barcodes)))


def merged_barcodes(pulpo: Iterable[Any], billbee: Iterable[Any], previous_billbee: Iterable[Any]) -> list[str]:
    """The barcodes to send on an update: PULPO's (the warehouse may have added some), without the
    Billbee EANs this flow sent before that Billbee no longer has, plus Billbee's current ones."""
    current = barcode_list(billbee)
    dropped = set(barcode_list(previous_billbee)) - set(current)
    kept = [code for code in barcode_list(pulpo) if code not in dropped]
    return kept + [code for code in current if code not in kept]


# --------------------------------------------------------------------------------------------------
# Bundles → kits


def is_bundle(fields: Mapping[str, Any]) -> bool:
    return fields.get("type") == BUNDLE_TYPE and bool(fields.get("bill_of_material"))


def kit_quantity(amount: Any) -> int | None:
    """A bill-of-material amount as PULPO's whole kit quantity, or None when it is not whole and > 0."""
    value = _measure(amount)
    return int(value) if value is not None and value.is_integer() else None


def component_label(line: Mapping[str, Any]) -> str:
    """A bill-of-material line as the merchant finds it in Billbee: its SKU, else the article id."""
    sku = _text(line.get("sku"))
    if sku:
        return f"component SKU {sku}"
    article = _text(line.get("article_id"))
    return f"component (Billbee article {article})" if article else "a component without SKU or article"


def kit_amount_problem(line: Mapping[str, Any]) -> str | None:
    """Why a bill-of-material line cannot be a PULPO kit item (whole quantities > 0), or None."""
    if kit_quantity(line.get("amount")) is not None:
        return None
    amount = line.get("amount")
    shown = "no amount" if amount is None else f"amount {amount}"
    return f"{component_label(line)}: {shown} is not a whole number > 0, but PULPO kits need whole quantities"


def kit_items(components: Iterable[tuple[int, int]]) -> list[dict[str, int]]:
    """Kit items, merged per product (a BOM may name one component twice) and sorted."""
    merged: dict[int, int] = {}
    for product_id, quantity in components:
        merged[product_id] = merged.get(product_id, 0) + quantity
    return [{"product_id": pid, "quantity": qty} for pid, qty in sorted(merged.items())]


def kit_signature(product_id: int, items: list[dict[str, int]]) -> str:
    """Identity of a kit's content: a different signature means a new kit (kits cannot be updated)."""
    parts = ",".join(f"{i['product_id']}x{i['quantity']}" for i in sorted(items, key=lambda i: i["product_id"]))
    return f"{product_id}:{parts}"


def kit_payload(product_id: int, name: str | None, items: list[dict[str, int]]) -> dict[str, Any]:
    payload: dict[str, Any] = {"product_id": product_id, "items": items}
    if name:
        payload["name"] = name
    return payload
