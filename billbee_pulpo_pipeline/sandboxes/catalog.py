"""The seeded product catalogue both sandboxes agree on.

Product `i` (0-based) is a pure function of (seed, i), so 200,000 products cost nothing until a page
of them is read, and the PULPO sandbox can pre-stock the same SKUs the Billbee sandbox sells.
The awkward cases real catalogues have are placed at fixed strides so tests can find them:

- every 97th product has no SKU (PULPO cannot link it: quarantine material),
- every 101st product shares its EAN with the product before it (duplicate EANs exist in real shops),
- every 50th product is a bundle (Type 2) whose bill of material lists the two products before it,
- titles carry umlauts, ß and every 13th one an emoji; ids are 17 digits (above 2**53).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

BILLBEE_ID_BASE = 20_000_000_000_000_000  # 17 digits: ids above 2**53 never survive a float
NO_SKU_STRIDE = 97
DUPLICATE_EAN_STRIDE = 101
BUNDLE_STRIDE = 50

_NOUNS = ["Tasse", "Müsli-Schale", "Geschirrtuch", "Gewürzdose", "Brotkörbchen", "Teekanne", "Löffel",
          "Schürze", "Käsemesser", "Öl-Flasche", "Salatbesteck", "Frühstücksbrett"]
_ADJECTIVES = ["blau", "grün", "weiß", "groß", "klein", "rustikal", "ökologisch", "süß", "rund", "eckig"]
_EMOJI = ["🍵", "🥣", "🧂", "🍞", "☕"]


@dataclass(frozen=True)
class CatalogItem:
    index: int
    billbee_id: int
    sku: str | None
    ean: str
    title_de: str
    title_en: str
    weight_g: int
    length_cm: float
    width_cm: float
    height_cm: float
    is_bundle: bool
    bom: tuple[tuple[int, int], ...]  # (component index, amount)
    price: float
    taric: str
    country_of_origin: str


def _digest(seed: int, i: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big")


def ean13(number: int) -> str:
    """A valid EAN-13 (German prefix 40-44) derived from `number`."""
    body = f"4{number % 10**11:011d}"[:12]
    total = sum(int(d) * (3 if pos % 2 else 1) for pos, d in enumerate(body))
    return body + str((10 - total % 10) % 10)


def billbee_product_id(i: int) -> int:
    return BILLBEE_ID_BASE + 1000 + i


def sku_for(i: int) -> str | None:
    return None if i % NO_SKU_STRIDE == NO_SKU_STRIDE - 1 else f"SKU-{i:07d}"


def is_bundle(i: int) -> bool:
    """Whether product `i` is a bundle, without building the whole item (seeding 200k products)."""
    return i % BUNDLE_STRIDE == BUNDLE_STRIDE - 1 and i >= 2


def catalog_item(seed: int, i: int) -> CatalogItem:
    d = _digest(seed, i)
    noun = _NOUNS[d % len(_NOUNS)]
    adjective = _ADJECTIVES[(d >> 8) % len(_ADJECTIVES)]
    emoji = f" {_EMOJI[(d >> 16) % len(_EMOJI)]}" if i % 13 == 7 else ""
    ean_source = i - 1 if i % DUPLICATE_EAN_STRIDE == DUPLICATE_EAN_STRIDE - 1 else i
    return CatalogItem(
        index=i,
        billbee_id=billbee_product_id(i),
        sku=sku_for(i),
        ean=ean13(_digest(seed, ean_source)),
        title_de=f"{noun} {adjective} Nr. {i}{emoji}",
        title_en=f"Item {i} ({adjective})",
        weight_g=50 + d % 4950,
        length_cm=float(5 + (d >> 20) % 60),
        width_cm=float(5 + (d >> 26) % 40),
        height_cm=float(1 + (d >> 32) % 30),
        is_bundle=is_bundle(i),
        bom=((i - 2, 1), (i - 1, 2)) if is_bundle(i) else (),
        price=round(1 + (d % 9999) / 100, 2),
        taric=f"{6900000000 + d % 99999999:010d}"[:8],
        country_of_origin=["DE", "AT", "PL", "CN", "IT"][(d >> 40) % 5],
    )
