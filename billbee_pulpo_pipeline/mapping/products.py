"""Billbee products: which fields the product flow transfers, and which products cannot be linked."""

from __future__ import annotations

from typing import Any

from billbee_pulpo_pipeline.clients.billbee.models import Product


def title(product: Product, language: str = "de") -> str | None:
    """The title in `language`, else the first non-empty one (Billbee titles are multilingual)."""
    texts = [t for t in (product.Title or []) if getattr(t, "Text", None)]
    for text in texts:
        if (getattr(text, "LanguageCode", None) or "").lower() == language.lower():
            return text.Text
    return texts[0].Text if texts else None


def product_fields(product: Product, language: str = "de") -> dict[str, Any]:
    """The Billbee fields the product flow sends to PULPO; their hash decides 'changed'."""
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
