"""The Billbee sandbox's world: products, orders and shipments, deterministic from the seed.

Nothing is generated up front, so a world of 200,000 products and 1,000,000 orders costs nothing
until it is read:

- Product `i` comes from `catalog.catalog_item(seed, i)`; changes (stock writes, PATCH) live in small
  override dicts, created products are appended after the catalogue.
- Historic order `i` (BillBeeOrderId = ORDER_ID_BASE + i) is a pure function of (seed, i). CreatedAt
  and LastModifiedAt grow with `i`, so every id or date filter maps to an index range. State, shop and
  shipping product come from a periodic table (`i % PERIOD`), so "state in {..}" filters are counted
  and indexed by arithmetic instead of scanning. An order that is changed moves into the overlay
  (a dict plus an index sorted by LastModifiedAt) and its base version drops out of the base range.
- A historic order in a shipped state has one shipment with BillbeeId = SHIPMENT_ID_BASE + i; shipments
  created in the sandbox get later ids, so "new shipments have a greater id" holds.

Times are integer milliseconds since the epoch (UTC) internally and ISO-8601 with offset on the wire.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from billbee_pulpo_pipeline.clients.billbee.states import DEFAULT_RESERVING_STATES
from billbee_pulpo_pipeline.sandboxes.catalog import (
    BILLBEE_ID_BASE,
    BUNDLE_STRIDE,
    NO_SKU_STRIDE,
    billbee_product_id,
    catalog_item,
    ean13,
    sku_for,
)

ORDER_ID_BASE = 30_000_000_000_000_000
SHIPMENT_ID_BASE = 40_000_000_000_000_000
ORDER_ITEM_ID_BASE = 50_000_000_000_000_000
ADDRESS_ID_BASE = 60_000_000_000_000_000
CUSTOMER_ID_BASE = 70_000_000_000_000_000
PRODUCT_ID_OFFSET = billbee_product_id(0)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
ORDER_SETTLE_MS = DAY_MS  # LastModifiedAt = CreatedAt + this (paid/shipped within a day)
SHIPPED_AFTER_MS = 12 * HOUR_MS
PRODUCT_HISTORY_MS = 365 * DAY_MS

PERIOD = 200  # length of the periodic state/shop/shipping tables
RECENT_CAP = 2000  # at most this many newest orders use the "recent" (mostly open) table
SHIPPED_STATES = frozenset({4, 5, 7, 9})
RESERVING_STATES = frozenset(DEFAULT_RESERVING_STATES)
DEFAULT_STOCK_ID = 1
MARKETPLACE_SKU_PREFIX = "AMZ-"  # seller SKU of a marketplace listing (knob `marketplace_skus`)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(ms: int | None) -> str | None:
    """ISO-8601 with offset, millisecond precision (the precision filters compare at)."""
    if ms is None:
        return None
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---- fixed reference data -------------------------------------------------------------------------


@dataclass(frozen=True)
class ShippingProduct:
    id: int
    display_name: str
    product_name: str
    requires_package_type: bool = False


@dataclass(frozen=True)
class ShippingProvider:
    id: int
    name: str
    carrier_id: int  # ShippingCarrier enum value
    carrier_name: str
    tracking_url: str  # format string with {tracking}
    products: tuple[ShippingProduct, ...]


PROVIDERS: tuple[ShippingProvider, ...] = (
    ShippingProvider(
        20000000000012101,
        "DHL",
        2,
        "DHL",
        "https://www.dhl.de/de/privatkunden/pakete-empfangen/verfolgen.html?piececode={tracking}",
        (
            ShippingProduct(20000000000083771, "DHL Paket", "V01PAK"),
            ShippingProduct(20000000000083772, "DHL Warenpost", "V62WP"),
        ),
    ),
    ShippingProvider(
        20000000000012103,
        "DHL Express",
        1,
        "DHL Express",
        "https://www.dhl.com/de-de/home/tracking.html?tracking-id={tracking}",
        (ShippingProduct(20000000000083776, "DHL Express Worldwide", "P", requires_package_type=True),),
    ),
    ShippingProvider(
        20000000000012105,
        "DPD",
        4,
        "DPD",
        "https://tracking.dpd.de/status/de_DE/parcel/{tracking}",
        (ShippingProduct(20000000000083781, "DPD Classic", "CL"),),
    ),
    ShippingProvider(
        20000000000012107,
        "GLS",
        6,
        "GLS",
        "https://gls-group.com/DE/de/paketverfolgung?match={tracking}",
        (ShippingProduct(20000000000083791, "GLS BusinessParcel", "PARCEL"),),
    ),
)
PROVIDER_BY_ID = {p.id: p for p in PROVIDERS}
# (provider, product) choices for historic orders, with weights out of 20.
SHIPPING_CHOICES: tuple[tuple[ShippingProvider, ShippingProduct, int], ...] = (
    (PROVIDERS[0], PROVIDERS[0].products[0], 10),
    (PROVIDERS[0], PROVIDERS[0].products[1], 3),
    (PROVIDERS[1], PROVIDERS[1].products[0], 1),
    (PROVIDERS[2], PROVIDERS[2].products[0], 3),
    (PROVIDERS[3], PROVIDERS[3].products[0], 3),
)

# ShippingCarrier enum (notes §7.3).
CARRIERS: dict[int, str] = {
    0: "other",
    1: "DHL Express",
    2: "DHL",
    3: "Hermes",
    4: "DPD",
    5: "UPS",
    6: "GLS",
    7: "DPAG",
    8: "Österr. Post",
    9: "FedEx",
    10: "General Overnight",
    11: "TNT",
    12: "Liefery",
    13: "iloxx",
    14: "Parcel.One",
    15: "Cargo International",
    16: "PIN Mail",
    17: "USPS",
    18: "Amazon Logistics",
}


@dataclass(frozen=True)
class Shop:
    id: int
    name: str
    platform: str


SHOPS: tuple[Shop, ...] = (
    Shop(20000000000000711, "Mein Shopify-Shop", "Shopify"),
    Shop(20000000000000712, "Amazon DE", "Amazon"),
    Shop(20000000000000713, "eBay Küchenträume", "eBay"),
)
SHOP_BY_ID = {s.id: s for s in SHOPS}
SHOP_WEIGHTS = (10, 7, 3)


@dataclass(frozen=True)
class StockLocation:
    id: int
    name: str
    description: str
    is_default: bool


STOCKS: tuple[StockLocation, ...] = (
    StockLocation(1, "Hauptlager", "Standardlager (PULPO)", True),
    StockLocation(2, "Außenlager Süd", "Zweitlager für Sperrgut", False),
)
STOCK_BY_ID = {s.id: s for s in STOCKS}

_FIRST = [
    "Jürgen",
    "Zoë",
    "Björn",
    "Anaïs",
    "Søren",
    "Maximilian",
    "Özlem",
    "Lena 🌸",
    "Jörg",
    "Renée",
    "Kübra",
    "Łukasz",
    "Chloé",
    "Matthäus",
    "Ida",
]
_LAST = [
    "Müller",
    "Weiß",
    "Schröder",
    "Öztürk",
    "Groß",
    "Bäcker",
    "Nguyễn",
    "Fuchs",
    "Hoffmann",
    "Dvořák",
    "Schmidt",
    "Koç",
    "Straßer",
    "Léger",
]
_STREETS = [
    "Königstraße",
    "Hauptstraße",
    "Schloßallee",
    "Mühlweg",
    "Am Bärenzwinger",
    "Mariahilfer Straße",
    "Bahnhofstrasse",
    "Rue du Rhône",
    "Großer Burstah",
    "Über den Höfen",
    "Gänsemarkt",
]
_CITIES: dict[str, tuple[tuple[str, str], ...]] = {
    "DE": (
        ("München", "80331"),
        ("Köln", "50667"),
        ("Düsseldorf", "40213"),
        ("Lübeck", "23552"),
        ("Görlitz", "02826"),
        ("Würzburg", "97070"),
    ),
    "AT": (("Wien", "1070"), ("Graz", "8010"), ("Salzburg", "5020"), ("Mödling", "2340")),
    "CH": (("Zürich", "8001"), ("Genève", "1204"), ("Basel", "4051"), ("Neuchâtel", "2000")),
}
_COUNTRY_NAMES = {"DE": "Deutschland", "AT": "Österreich", "CH": "Schweiz"}
_COMPANIES = ["Café ☕ Sonnenschein", "Bäckerei Groß & Söhne", "Grüne Wiese GmbH", "Küchenwelt 🍳 KG"]
_LINE2 = ["c/o Packstation 🎁", "Hinterhaus, 2. OG", "bei Müller"]


def _hash(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=32).digest(), "big")


# ---- periodic index selections --------------------------------------------------------------------

Entry = tuple[int, int, int]  # (state, shop position, shipping choice position)


@dataclass(frozen=True)
class Segment:
    lo: int
    hi: int
    table: tuple[Entry, ...]


def _upto(residues: list[int], x: int) -> int:
    """How many indices in [0, x) have a residue (mod PERIOD) in `residues`."""
    return (x // PERIOD) * len(residues) + bisect_left(residues, x % PERIOD)


class Selection:
    """The indices in [lo, hi) whose periodic table entry satisfies a predicate, counted and indexed
    by arithmetic: count, rank of an index and the k-th index cost O(segments), not O(N)."""

    def __init__(
        self, segments: tuple[Segment, ...], lo: int, hi: int, predicate: Callable[[Entry], bool] | None
    ) -> None:
        self.parts: list[tuple[int, int, list[int], int]] = []  # (a, b, residues, count)
        for seg in segments:
            a, b = max(lo, seg.lo), min(hi, seg.hi)
            if a >= b:
                continue
            residues = [r for r in range(PERIOD) if predicate is None or predicate(seg.table[r])]
            if residues:
                self.parts.append((a, b, residues, _upto(residues, b) - _upto(residues, a)))

    def count(self) -> int:
        return sum(part[3] for part in self.parts)

    def count_below(self, x: int) -> int:
        total = 0
        for a, b, residues, count in self.parts:
            if x >= b:
                total += count
            elif x > a:
                total += _upto(residues, x) - _upto(residues, a)
        return total

    def contains(self, i: int) -> bool:
        return any(a <= i < b and (i % PERIOD) in residues for a, b, residues, _ in self.parts)

    def kth(self, k: int) -> int | None:
        """The k-th (0-based) selected index, or None past the end."""
        for a, _, residues, count in self.parts:
            if k < count:
                rank = _upto(residues, a) + k
                return (rank // len(residues)) * PERIOD + residues[rank % len(residues)]
            k -= count
        return None

    def iter_from(self, k: int, excluded: list[int]) -> Iterator[int]:
        """Selected indices that are not in `excluded` (sorted, all selected), from the k-th such one."""
        rank = k
        while True:  # smallest fixed point of rank = k + #excluded <= kth(rank)
            idx = self.kth(rank)
            if idx is None:
                return
            settled = k + bisect_right(excluded, idx)
            if settled == rank:
                break
            rank = settled
        skip = set(excluded)
        while (idx := self.kth(rank)) is not None:
            rank += 1
            if idx not in skip:
                yield idx


def _weighted_table(rng: random.Random, weights: dict[int, int]) -> list[int]:
    values = [value for value, weight in weights.items() for _ in range(weight)]
    assert len(values) == PERIOD
    rng.shuffle(values)
    return values


WORLD_OPTIONS = ("history_days", "recent_orders", "only_state")
"""Optional generation parameters of `World` (also accepted by POST /__sandbox/reset)."""


def build_segments(seed: int, orders: int, recent_orders: int | None = None,
                   only_state: int | None = None) -> tuple[Segment, ...]:
    """Old orders: mostly shipped/closed, a few open stragglers; the newest ones (`recent_orders`, default a
    fifth, at most RECENT_CAP): mostly open. `only_state` puts every order in that one state."""
    recent = orders if orders < 5 else min(orders // 5, RECENT_CAP)
    if recent_orders is not None:
        recent = max(0, min(orders, recent_orders))
    rng = random.Random(f"billbee-orders:{seed}")
    old_states = _weighted_table(rng, {4: 80, 7: 95, 8: 12, 5: 2, 6: 2, 9: 5, 3: 2, 1: 1, 2: 1})
    new_states = _weighted_table(rng, {1: 50, 2: 20, 3: 80, 4: 30, 8: 10, 13: 5, 16: 5})
    if only_state is not None:
        old_states = new_states = [only_state] * PERIOD
    shops = rng.choices(range(len(SHOPS)), weights=SHOP_WEIGHTS, k=PERIOD)
    shipping = rng.choices(range(len(SHIPPING_CHOICES)), weights=[c[2] for c in SHIPPING_CHOICES], k=PERIOD)
    old = tuple(zip(old_states, shops, shipping, strict=True))
    new = tuple(zip(new_states, shops, shipping, strict=True))
    return (Segment(0, orders - recent, old), Segment(orders - recent, orders, new))


# ---- records ---------------------------------------------------------------------------------------


@dataclass
class OrderRow:
    """An order in the overlay: a changed historic order or one created through the API."""

    data: dict[str, Any]
    created_ms: int
    modified_ms: int
    base_index: int | None
    package_type: bool = False


@dataclass
class ProductCore:
    """The fields of a product the sandbox models; the wire model is built from this."""

    index: int
    sku: str | None
    ean: str
    title_de: str
    title_en: str
    weight_g: int
    length_cm: float
    width_cm: float
    height_cm: float
    bom: tuple[tuple[int, float], ...]  # (component index, amount)
    price: float
    taric: str
    country_of_origin: str
    stocks: dict[int, float]
    stock_codes: dict[int, str] = field(default_factory=dict)
    manufacturer: str = "Manufaktur Süd"
    extra_titles: list[dict[str, str]] = field(default_factory=list)

    @property
    def is_bundle(self) -> bool:
        return bool(self.bom)


class WorldError(Exception):
    """A business rule refused the request; `code` is Billbee's ErrorCode."""

    def __init__(self, message: str, code: int = 11, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


@dataclass
class OrderFilter:
    min_order_ms: int | None = None  # CreatedAt >= (inclusive)
    max_order_ms: int | None = None  # CreatedAt <= (inclusive)
    modified_min_ms: int | None = None  # LastModifiedAt > (exclusive: "newer than")
    modified_max_ms: int | None = None  # LastModifiedAt <= (inclusive)
    min_order_id: int | None = None
    states: frozenset[int] | None = None
    shops: frozenset[int] | None = None
    tags: tuple[str, ...] = ()
    exclude_tags: bool = False


@dataclass
class ShipmentFilter:
    created_min_ms: int | None = None
    created_max_ms: int | None = None
    order_id: int | None = None
    min_shipment_id: int | None = None
    provider_id: int | None = None


# ---- the world -------------------------------------------------------------------------------------


class World:
    """Products, orders and shipments of one sandbox run. Not thread-safe: the app's event loop
    serialises all access."""

    def __init__(
        self, *, seed: int = 1, products: int = 1000, orders: int = 2000, start_ms: int | None = None,
        marketplace_skus: bool = False,
        history_days: int = 30, recent_orders: int | None = None, only_state: int | None = None,
    ) -> None:
        if products < 0 or orders < 0:
            raise ValueError("products and orders must be >= 0")
        if history_days < 2:
            raise ValueError("history_days must be >= 2")
        self.seed = seed
        # Knob (reset param, off by default): the first line of every Amazon order carries the listing's
        # seller SKU (MARKETPLACE_SKU_PREFIX + the article's SKU) instead of the article's, as Billbee shows
        # positions of marketplace listings linked to an article with another SKU (Product.BillbeeId).
        self.marketplace_skus = marketplace_skus
        self.n_products = products
        self.n_orders = orders
        self.start_ms = start_ms if start_ms is not None else now_ms()
        # Historic orders are created in the `history_days` before the start (last changed a day later).
        self.history_ms = int(history_days) * DAY_MS
        self.segments = build_segments(seed, orders, recent_orders, only_state)
        self._last_bump_ms = self.start_ms
        # orders
        self.overlay: dict[int, OrderRow] = {}
        self.overlay_base: list[int] = []  # sorted base indices held in the overlay
        self.by_modified: list[tuple[int, int]] = []  # sorted (LastModifiedAt ms, order id)
        self.ext_refs: dict[str, int] = {}  # OrderNumber / Id of created orders -> id
        self.next_order_index = orders
        self._next_item_id = ORDER_ITEM_ID_BASE + 8 * orders + 8
        # shipments created in the sandbox, ascending BillbeeId
        self.shipments: list[dict[str, Any]] = []
        self._shipment_meta: list[tuple[int, int | None, int]] = []  # (created ms, provider id, order id)
        # products
        self.product_over: dict[int, ProductCore] = {}
        self.new_product_created: list[int] = []
        self._sku_index: dict[str, int] = {}  # SKUs of created products
        self._ean_index: dict[str, list[int]] | None = None
        self._reserved: dict[int, float] | None = None  # product id -> unfulfilled qty (default stock)
        self.deleted_products: list[int] = []  # sorted indices of deleted products (gone from every read)
        # Knob (off: None): (product index, page) deletes that product once a product list has served that
        # page, i.e. while a client pages through the catalogue.
        self.delete_during_scan: tuple[int, int] | None = None

    # ---- time ----------------------------------------------------------------------------------

    def bump_ms(self) -> int:
        """A fresh LastModifiedAt: now, but strictly after every earlier bump, so no two changes tie."""
        self._last_bump_ms = max(now_ms(), self._last_bump_ms + 1)
        return self._last_bump_ms

    def order_created_ms(self, i: int) -> int:
        span = self.history_ms - ORDER_SETTLE_MS
        return self.start_ms - self.history_ms + (i * span) // max(self.n_orders, 1)

    def order_modified_ms(self, i: int) -> int:
        return self.order_created_ms(i) + ORDER_SETTLE_MS

    def product_created_ms(self, i: int) -> int:
        if i < self.n_products:
            return (
                self.start_ms
                - PRODUCT_HISTORY_MS
                + (i * (PRODUCT_HISTORY_MS - DAY_MS)) // max(self.n_products, 1)
            )
        return self.new_product_created[i - self.n_products]

    def _first_index(self, n: int, key: Callable[[int], int], bound: int, inclusive: bool) -> int:
        """First index in [0, n) whose key is >= bound (inclusive) or > bound (exclusive)."""
        search = bisect_left if inclusive else bisect_right
        return search(range(n), bound, key=key)

    # ---- products ------------------------------------------------------------------------------

    @property
    def product_count(self) -> int:
        return self.n_products + len(self.new_product_created)

    def product_core(self, i: int) -> ProductCore:
        over = self.product_over.get(i)
        if over is not None:
            return over
        item = catalog_item(self.seed, i)
        h = _hash("stock", self.seed, i)
        stock1 = 0.0 if i % 11 == 3 else float(h % 120)
        stock2 = float((h >> 8) % 15) if i % 4 == 0 else 0.0
        return ProductCore(
            index=i,
            sku=item.sku,
            ean=item.ean,
            title_de=item.title_de,
            title_en=item.title_en,
            weight_g=item.weight_g,
            length_cm=item.length_cm,
            width_cm=item.width_cm,
            height_cm=item.height_cm,
            bom=tuple((c, float(a)) for c, a in item.bom if c < self.n_products),
            price=item.price,
            taric=item.taric,
            country_of_origin=item.country_of_origin,
            stocks={1: stock1, 2: stock2},
            stock_codes={1: f"A-{(i // 100) % 50:02d}-{i % 100:02d}", 2: f"S-{i % 40:02d}"},
        )

    def editable_product(self, i: int) -> ProductCore:
        """The product's record in the override dict (copied there on first change)."""
        if i not in self.product_over:
            self.product_over[i] = self.product_core(i)
        return self.product_over[i]

    def is_deleted(self, i: int) -> bool:
        at = bisect_left(self.deleted_products, i)
        return at < len(self.deleted_products) and self.deleted_products[at] == i

    def product_index_by_id(self, product_id: int) -> int | None:
        i = product_id - PRODUCT_ID_OFFSET
        return i if 0 <= i < self.product_count and not self.is_deleted(i) else None

    def product_index_by_sku(self, sku: str) -> int | None:
        if sku in self._sku_index:
            return self._sku_index[sku]
        match = re.fullmatch(r"SKU-(\d{7,})", sku)
        if match:
            i = int(match.group(1))
            if i < self.n_products and not self.is_deleted(i) and self.product_core(i).sku == sku:
                return i
        return None

    def product_indices_by_ean(self, ean: str) -> list[int]:
        if self._ean_index is None:  # built once, on the first EAN lookup
            index: dict[str, list[int]] = {}
            for i in range(self.product_count):
                index.setdefault(self.product_core(i).ean, []).append(i)
            self._ean_index = index
        return [i for i in self._ean_index.get(ean, []) if not self.is_deleted(i)]

    def delete_product(self, i: int) -> None:
        """Delete a product (DELETE /products/{id}): it leaves every read, and later pages shift by one."""
        if self.is_deleted(i):
            return
        insort(self.deleted_products, i)
        core = self.product_core(i)
        if core.sku and self._sku_index.get(core.sku) == i:
            del self._sku_index[core.sku]

    def page_served(self, page: int) -> None:
        """The knob `delete_during_scan`: delete its product once its page has been served."""
        if self.delete_during_scan is not None and page == self.delete_during_scan[1]:
            index, _ = self.delete_during_scan
            self.delete_during_scan = None
            self.delete_product(index)

    def _reindex_ean(self, i: int, old: str | None, new: str) -> None:
        if self._ean_index is None:
            return
        if old is not None and i in self._ean_index.get(old, []):
            self._ean_index[old].remove(i)
        insort(self._ean_index.setdefault(new, []), i)

    def stock_of(self, core: ProductCore, stock_id: int) -> float:
        """Current stock; a bundle's is calculated from its components."""
        if not core.is_bundle:
            return core.stocks.get(stock_id, 0.0)
        amounts = []
        for component, amount in core.bom:
            part = self.product_core(component)
            amounts.append(self.stock_of(part, stock_id) // amount if amount else 0.0)
        return float(min(amounts)) if amounts else 0.0

    def reserved_amount(self, product_id: int, stock_id: int = DEFAULT_STOCK_ID) -> float:
        if stock_id != DEFAULT_STOCK_ID:
            return 0.0
        return self._reservations().get(product_id, 0.0)

    def product_page(
        self, *, min_created_ms: int | None, min_id: int | None, max_id: int | None, page: int, page_size: int
    ) -> tuple[int, list[ProductCore]]:
        n = self.product_count
        lo, hi = 0, n
        if min_created_ms is not None:
            lo = max(lo, self._first_index(n, self.product_created_ms, min_created_ms, inclusive=True))
        if min_id is not None:
            lo = max(lo, min_id - PRODUCT_ID_OFFSET)
        if max_id is not None:
            hi = min(hi, max_id - PRODUCT_ID_OFFSET + 1)
        gone = self.deleted_products[bisect_left(self.deleted_products, lo):bisect_left(self.deleted_products, hi)]
        total = max(0, hi - lo - len(gone))
        start = lo + (page - 1) * page_size
        for index in gone:  # the position of the start-th live product: step over the deleted ones before it
            if index > start:
                break
            start += 1
        skip, out, i = set(gone), [], start
        while i < hi and len(out) < page_size:
            if i not in skip:
                out.append(self.product_core(i))
            i += 1
        return total, out

    def create_product(self, core_fields: dict[str, Any]) -> ProductCore:
        sku = core_fields.get("sku")
        if sku and self.product_index_by_sku(sku) is not None:
            raise WorldError(f"Ein Artikel mit der SKU '{sku}' existiert bereits", code=11)
        i = self.product_count
        core = ProductCore(index=i, **core_fields)
        self.product_over[i] = core
        self.new_product_created.append(max(self.bump_ms(), self.start_ms))
        if sku:
            self._sku_index[sku] = i
        self._reindex_ean(i, None, core.ean)
        return core

    def patch_product(self, i: int, changes: dict[str, Any]) -> ProductCore:
        core = self.editable_product(i)
        if "ean" in changes:
            self._reindex_ean(i, core.ean, changes["ean"])
        if "sku" in changes:
            self._sku_index.pop(core.sku or "", None)
            if changes["sku"]:
                self._sku_index[changes["sku"]] = i
        for key, value in changes.items():
            setattr(core, key, value)
        return core

    def set_stock(self, i: int, stock_id: int, quantity: float) -> tuple[float, float]:
        """Set the absolute stock of a (non-bundle) product; returns (old, new)."""
        core = self.editable_product(i)
        old = core.stocks.get(stock_id, 0.0)
        core.stocks[stock_id] = quantity
        return old, quantity

    def set_stock_code(self, i: int, stock_id: int, code: str) -> None:
        self.editable_product(i).stock_codes[stock_id] = code

    # ---- historic orders -----------------------------------------------------------------------

    def entry(self, i: int) -> Entry:
        for seg in self.segments:
            if seg.lo <= i < seg.hi:
                return seg.table[i % PERIOD]
        raise IndexError(i)

    def _order_number(self, i: int, shop: Shop) -> tuple[str, str]:
        """(OrderNumber, Id) of historic order i; both encode i so they can be looked up."""
        if shop.platform == "Shopify":
            number, ext_id = f"#{1001 + i}", str(4_500_000_000_000 + i)
        elif shop.platform == "Amazon":
            number = f"302-{(i * 7919 + self.seed) % 10**7:07d}-{i:07d}"
            ext_id = number
        else:
            number = f"{(i * 31) % 100:02d}-{i:08d}-{(i * 97) % 100000:05d}"
            ext_id = number
        if i % 19 == 7:  # some marketplaces deliver no order number
            number = ""
        return number, ext_id

    def base_index_for_ref(self, ref: str) -> int | None:
        candidates = []
        if re.fullmatch(r"#\d+", ref):
            candidates.append(int(ref[1:]) - 1001)
        elif re.fullmatch(r"\d{13}", ref):
            candidates.append(int(ref) - 4_500_000_000_000)
        elif (m := re.fullmatch(r"302-\d{7}-(\d{7})", ref)) or (
            m := re.fullmatch(r"\d{2}-(\d{8})-\d{5}", ref)
        ):
            candidates.append(int(m.group(1)))
        for i in candidates:
            if 0 <= i < self.n_orders:
                number, ext_id = self._order_number(i, SHOPS[self.entry(i)[1]])
                if ref in (number, ext_id):
                    return i
        return None

    def _address(self, h: int, salt: int, first: str, last: str) -> dict[str, Any]:
        country = ("DE", "DE", "DE", "DE", "DE", "DE", "DE", "AT", "AT", "CH")[h % 10]
        city, zip_code = _CITIES[country][(h >> 4) % len(_CITIES[country])]
        return {
            "BillbeeId": ADDRESS_ID_BASE + salt,
            "FirstName": first,
            "LastName": last,
            "Company": _COMPANIES[(h >> 10) % len(_COMPANIES)] if h % 9 == 4 else "",
            "NameAddition": "",
            "Street": _STREETS[(h >> 14) % len(_STREETS)],
            "HouseNumber": f"{1 + (h >> 20) % 120}{'a' if h % 7 == 2 else ''}",
            "Zip": zip_code,
            "City": city,
            "CountryISO2": country,
            "Country": _COUNTRY_NAMES[country],
            "Line2": _LINE2[(h >> 26) % len(_LINE2)] if h % 11 == 5 else "",
            "Email": f"kunde{salt % 100000}@example.com",
            "State": "",
            "Phone": f"+49 {30 + (h >> 30) % 900} {(h >> 40) % 10**7:07d}" if h % 3 else "",
        }

    def _base_lines(self, i: int, h: int) -> list[tuple[int, float]]:
        """(product index, quantity) of historic order i's article lines."""
        n = self.n_products
        if n == 0:
            return []
        lines = []
        for j in range(1 + h % 3):
            bits = h >> (8 + 24 * j)
            lines.append((bits % n, float(1 + (bits >> 18) % 3)))
        if i % 23 == 5 and n >= NO_SKU_STRIDE:  # a line whose product has no SKU
            k = (h >> 100) % (n // NO_SKU_STRIDE)
            lines[0] = (NO_SKU_STRIDE - 1 + NO_SKU_STRIDE * k, 1.0)
        if i % 31 == 3 and n >= BUNDLE_STRIDE:  # a bundle
            k = (h >> 120) % (n // BUNDLE_STRIDE)
            lines[-1] = (BUNDLE_STRIDE - 1 + BUNDLE_STRIDE * k, 1.0)
        return lines

    def base_order(self, i: int, title_source: int = 0) -> dict[str, Any]:
        h = _hash("order", self.seed, i)
        state, shop_pos, ship_pos = self.entry(i)
        shop = SHOPS[shop_pos]
        provider, product, _ = SHIPPING_CHOICES[ship_pos]
        created = self.order_created_ms(i)
        number, ext_id = self._order_number(i, shop)
        first = _FIRST[(h >> 140) % len(_FIRST)]
        last = _LAST[(h >> 150) % len(_LAST)]
        address = self._address(h >> 160, 2 * i, first, last)
        items = [
            self._item(ORDER_ITEM_ID_BASE + 8 * i + j, idx, qty, title_source, shop, j)
            for j, (idx, qty) in enumerate(self._base_lines(i, h))
        ]
        if i % 17 == 4:
            items.append(self._coupon_item(ORDER_ITEM_ID_BASE + 8 * i + 7))
        paid = state in (3, 4, 5, 7, 9, 13, 16)
        shipped = state in SHIPPED_STATES
        shipments = [self._base_shipment(i, provider, product)] if shipped else []
        order = self._order_skeleton(
            order_id=ORDER_ID_BASE + i,
            ext_id=ext_id,
            number=number,
            state=state,
            shop=shop,
            created=created,
            modified=created + ORDER_SETTLE_MS,
            items=items,
            invoice=address,
            shipping=dict(address, BillbeeId=address["BillbeeId"] + 1),
            provider=provider,
            product=product,
            customer_id=CUSTOMER_ID_BASE + (h >> 170) % 500_000,
        )
        order["ConfirmedAt"] = iso(created + 10 * 60_000) if state != 1 else None
        order["PayedAt"] = iso(created + 2 * HOUR_MS) if paid else None
        order["PaidAmount"] = round(order["TotalCost"] + order["ShippingCost"], 2) if paid else 0.0
        order["ShippedAt"] = iso(created + SHIPPED_AFTER_MS) if shipped else None
        order["InvoiceNumber"] = 10_000 + i if paid else None
        order["InvoiceDate"] = iso(created + 2 * HOUR_MS) if paid else None
        order["ShippingIds"] = shipments
        order["ArchivedAt"] = iso(created + ORDER_SETTLE_MS) if state == 9 else None
        order["History"] = [
            {
                "Created": iso(created),
                "EventTypeName": "Auftrag importiert",
                "Text": f"Auftrag aus {shop.name} importiert",
                "EmployeeName": None,
                "TypeId": 0,
            }
        ]
        return order

    def _item(
        self, item_id: int, idx: int, qty: float, title_source: int, shop: Shop, j: int
    ) -> dict[str, Any]:
        core = self.product_core(idx)
        price = core.price
        listing = shop.platform == "Amazon" and j == 0
        title = self.item_title(core, title_source, marketplace=listing)
        total = round(price * qty, 2)
        sold_as = f"{MARKETPLACE_SKU_PREFIX}{core.sku}" if listing and self.marketplace_skus and core.sku else core.sku
        return {
            "BillbeeId": item_id,
            "TransactionId": None,
            "Product": {
                "OldId": None,
                "Id": f"{shop.platform[:3].upper()}-{idx}",
                "Title": title,
                "Weight": core.weight_g,
                "SKU": sold_as,
                "SkuOrId": sold_as or f"{shop.platform[:3].upper()}-{idx}",
                "IsDigital": False,
                "Images": [],
                "EAN": core.ean,
                "PlatformData": None,
                "TARICCode": core.taric,
                "CountryOfOrigin": core.country_of_origin,
                "BillbeeId": billbee_product_id(idx),
                "Type": 2 if core.is_bundle else 1,
            },
            "Quantity": qty,
            "TotalPrice": total,
            "TaxAmount": round(total * 19 / 119, 2),
            "TaxIndex": 1,
            "Discount": 0.0,
            "Attributes": [],
            "GetPriceFromArticleIfAny": False,
            "IsCoupon": False,
            "ShippingProfileId": None,
            "DontAdjustStock": False,
            "UnrebatedTotalPrice": total,
            "SerialNumber": None,
            "InvoiceSKU": core.sku,
        }

    @staticmethod
    def item_title(core: ProductCore, title_source: int, marketplace: bool = False) -> str:
        if title_source == 1:  # article title
            return core.title_de
        if title_source == 2:  # article invoice text
            return f"{core.title_de} (Rechnungstext)"
        if marketplace:  # order position: what the marketplace called it
            return f"{core.title_de} | Gratis Versand"
        return core.title_de

    @staticmethod
    def _coupon_item(item_id: int) -> dict[str, Any]:
        return {
            "BillbeeId": item_id,
            "TransactionId": None,
            "Product": {
                "OldId": None,
                "Id": "COUPON-SOMMER10",
                "Title": "Gutschein SOMMER10 🎟️",
                "Weight": 0,
                "SKU": None,
                "SkuOrId": "COUPON-SOMMER10",
                "IsDigital": True,
                "Images": [],
                "EAN": None,
                "PlatformData": None,
                "TARICCode": None,
                "CountryOfOrigin": None,
                "BillbeeId": None,
                "Type": 1,
            },
            "Quantity": 1.0,
            "TotalPrice": -5.0,
            "TaxAmount": 0.0,
            "TaxIndex": 0,
            "Discount": 0.0,
            "Attributes": [],
            "GetPriceFromArticleIfAny": False,
            "IsCoupon": True,
            "ShippingProfileId": None,
            "DontAdjustStock": True,
            "UnrebatedTotalPrice": -5.0,
            "SerialNumber": None,
            "InvoiceSKU": None,
        }

    def _order_skeleton(
        self,
        *,
        order_id: int,
        ext_id: str,
        number: str,
        state: int,
        shop: Shop,
        created: int,
        modified: int,
        items: list[dict[str, Any]],
        invoice: dict[str, Any],
        shipping: dict[str, Any],
        provider: ShippingProvider | None,
        product: ShippingProduct | None,
        customer_id: int,
    ) -> dict[str, Any]:
        total = round(sum(item["TotalPrice"] for item in items), 2)
        full_name = f"{invoice.get('FirstName') or ''} {invoice.get('LastName') or ''}".strip()
        user = {
            "Platform": shop.platform,
            "BillbeeShopName": shop.name,
            "BillbeeShopId": shop.id,
            "Id": None,
            "Nick": None,
            "FirstName": None,
            "LastName": None,
            "FullName": None,
            "Email": None,
        }
        return {
            "RebateDifference": 0.0,
            "ShippingIds": [],
            "AcceptLossOfReturnRight": False,
            "Id": ext_id,
            "OrderNumber": number,
            "State": state,
            "VatMode": 0,
            "CreatedAt": iso(created),
            "ShippedAt": None,
            "ConfirmedAt": None,
            "PayedAt": None,
            "SellerComment": None,
            "Comments": [],
            "InvoiceNumberPrefix": "RE-",
            "InvoiceNumberPostfix": None,
            "InvoiceNumber": None,
            "InvoiceDate": None,
            "InvoiceAddress": invoice,
            "ShippingAddress": shipping,
            "PaymentMethod": 22 if shop.platform == "Shopify" else 19,
            "ShippingCost": 4.9,
            "TotalCost": total,
            "AdjustmentCost": 0.0,
            "AdjustmentReason": None,
            "OrderItems": items,
            "Currency": "EUR",
            "Seller": user,
            "Buyer": dict(
                user,
                Id=str(customer_id),
                FirstName=invoice.get("FirstName"),
                LastName=invoice.get("LastName"),
                FullName=full_name,
                Email=invoice.get("Email"),
            ),
            "UpdatedAt": iso(modified),
            "TaxRate1": 19.0,
            "TaxRate2": 7.0,
            "BillBeeOrderId": order_id,
            "BillBeeParentOrderId": None,
            "VatId": None,
            "Tags": [],
            "ShipWeightKg": round(
                sum((item["Product"].get("Weight") or 0) * item["Quantity"] for item in items) / 1000, 3
            ),
            "LanguageCode": "de",
            "PaidAmount": 0.0,
            "ShippingProfileId": None,
            "ShippingProviderId": provider.id if provider else None,
            "ShippingProviderProductId": product.id if product else None,
            "ShippingProviderName": provider.name if provider else None,
            "ShippingProviderProductName": product.display_name if product else None,
            "ShippingProfileName": None,
            "PaymentInstruction": None,
            "IsCancelationFor": None,
            "PaymentTransactionId": None,
            "DistributionCenter": None,
            "DeliverySourceCountryCode": None,
            "CustomInvoiceNote": None,
            "CustomerNumber": str(customer_id % 10**7),
            "PaymentReference": None,
            "ShippingServices": [],
            "Customer": {
                "Id": customer_id,
                "Name": full_name,
                "Email": invoice.get("Email"),
                "Tel1": None,
                "Tel2": None,
                "Number": customer_id % 10**7,
                "PriceGroupId": None,
                "LanguageId": 1,
                "VatId": None,
                "Type": 0,
                "MetaData": [],
                "ArchivedAt": None,
                "RestoredAt": None,
            },
            "History": [],
            "Payments": [],
            "LastModifiedAt": iso(modified),
            "ArchivedAt": None,
            "RestoredAt": None,
            "ApiAccountId": shop.id,
            "ApiAccountName": shop.name,
            "MerchantVatId": "DE123456789",
            "CustomerVatId": None,
            "IsFromBillbeeApi": False,
            "WebUrl": f"https://app.billbee.io/app_v2/order/{order_id}",
        }

    # ---- order lookups and paging --------------------------------------------------------------

    def get_order(self, order_id: int, title_source: int = 0) -> dict[str, Any] | None:
        row = self.overlay.get(order_id)
        if row is not None:
            return self._with_titles(row.data, title_source)
        i = order_id - ORDER_ID_BASE
        if 0 <= i < self.n_orders:
            return self.base_order(i, title_source)
        return None

    def _with_titles(self, order: dict[str, Any], title_source: int) -> dict[str, Any]:
        """An overlay order as stored, with article titles taken from `title_source` if not 0."""
        if title_source == 0:
            return order
        items = []
        for item in order["OrderItems"]:
            product_id = (item.get("Product") or {}).get("BillbeeId")
            i = self.product_index_by_id(product_id) if isinstance(product_id, int) else None
            if i is None or item.get("IsCoupon"):
                items.append(item)
                continue
            title = self.item_title(self.product_core(i), title_source)
            items.append(dict(item, Product=dict(item["Product"], Title=title)))
        return dict(order, OrderItems=items)

    def find_by_ext_ref(self, ref: str) -> int | None:
        if ref in self.ext_refs:
            return self.ext_refs[ref]
        i = self.base_index_for_ref(ref)
        return None if i is None else ORDER_ID_BASE + i

    def _row_matches(self, row: OrderRow, f: OrderFilter) -> bool:
        data = row.data
        if f.min_order_ms is not None and row.created_ms < f.min_order_ms:
            return False
        if f.max_order_ms is not None and row.created_ms > f.max_order_ms:
            return False
        if f.modified_min_ms is not None and row.modified_ms <= f.modified_min_ms:
            return False
        if f.modified_max_ms is not None and row.modified_ms > f.modified_max_ms:
            return False
        if f.min_order_id is not None and data["BillBeeOrderId"] < f.min_order_id:
            return False
        if f.states is not None and data["State"] not in f.states:
            return False
        if f.shops is not None and data["ApiAccountId"] not in f.shops:
            return False
        if f.tags:
            own = {t.casefold() for t in data["Tags"]}
            hit = any(t.casefold() in own for t in f.tags)
            if hit == f.exclude_tags:
                return False
        return True

    def _base_selection(self, f: OrderFilter) -> Selection:
        n = self.n_orders
        lo, hi = 0, n
        if f.tags and not f.exclude_tags:  # historic orders carry no tags
            hi = 0
        if f.min_order_id is not None:
            lo = max(lo, min(n, f.min_order_id - ORDER_ID_BASE))
        if f.min_order_ms is not None:
            lo = max(lo, self._first_index(n, self.order_created_ms, f.min_order_ms, inclusive=True))
        if f.max_order_ms is not None:
            hi = min(hi, self._first_index(n, self.order_created_ms, f.max_order_ms, inclusive=False))
        if f.modified_min_ms is not None:
            lo = max(lo, self._first_index(n, self.order_modified_ms, f.modified_min_ms, inclusive=False))
        if f.modified_max_ms is not None:
            hi = min(hi, self._first_index(n, self.order_modified_ms, f.modified_max_ms, inclusive=False))
        states, shops = f.states, f.shops
        shop_positions = None if shops is None else {p for p, s in enumerate(SHOPS) if s.id in shops}

        def predicate(entry: Entry) -> bool:
            return (states is None or entry[0] in states) and (
                shop_positions is None or entry[1] in shop_positions
            )

        return Selection(self.segments, lo, hi, None if states is None and shops is None else predicate)

    def _overlay_candidates(self, f: OrderFilter) -> list[OrderRow]:
        if f.modified_min_ms is None:
            return list(self.overlay.values())
        start = bisect_right(self.by_modified, (f.modified_min_ms, 1 << 62))
        return [self.overlay[order_id] for _, order_id in self.by_modified[start:]]

    def order_page(
        self, f: OrderFilter, page: int, page_size: int, title_source: int = 0
    ) -> tuple[int, list[dict[str, Any]]]:
        """Orders matching `f` ordered by BillBeeOrderId, evaluated now (no snapshot between pages)."""
        if page < 1 or page_size < 1:
            raise ValueError("page and page_size start at 1")
        sel = self._base_selection(f)
        lo_i = bisect_left(self.overlay_base, sel.parts[0][0]) if sel.parts else 0
        excluded = [e for e in self.overlay_base[lo_i:] if sel.contains(e)] if sel.parts else []
        matches = sorted(
            row.data["BillBeeOrderId"] for row in self._overlay_candidates(f) if self._row_matches(row, f)
        )
        total = sel.count() - len(excluded) + len(matches)
        offset = (page - 1) * page_size
        if offset >= total:
            return total, []

        def base_below(order_id: int) -> int:
            x = min(max(order_id - ORDER_ID_BASE, 0), self.n_orders)
            return sel.count_below(x) - bisect_left(excluded, x)

        # Overlay orders that come before `offset` in the merged order; the rest of the offset is base.
        before = bisect_left(range(len(matches)), offset, key=lambda j: j + base_below(matches[j]))
        base_iter = sel.iter_from(offset - before, excluded)
        out: list[dict[str, Any]] = []
        next_base = next(base_iter, None)
        j = before
        while len(out) < page_size:
            next_over = matches[j] if j < len(matches) else None
            if next_base is None and next_over is None:
                break
            if next_over is None or (next_base is not None and ORDER_ID_BASE + next_base < next_over):
                assert next_base is not None
                out.append(self.base_order(next_base, title_source))
                next_base = next(base_iter, None)
            else:
                out.append(self._with_titles(self.overlay[next_over].data, title_source))
                j += 1
        return total, out

    # ---- order changes -------------------------------------------------------------------------

    def _row_for_change(self, order_id: int) -> OrderRow:
        """The overlay row of an order, moving a historic order into the overlay first."""
        row = self.overlay.get(order_id)
        if row is not None:
            return row
        i = order_id - ORDER_ID_BASE
        if not 0 <= i < self.n_orders:
            raise WorldError("Order not found", code=2, status=404)
        row = OrderRow(self.base_order(i), self.order_created_ms(i), self.order_modified_ms(i), i)
        self.overlay[order_id] = row
        insort(self.overlay_base, i)
        insort(self.by_modified, (row.modified_ms, order_id))
        return row

    def _touch(self, row: OrderRow, history: str | None = None) -> None:
        order_id = row.data["BillBeeOrderId"]
        k = bisect_left(self.by_modified, (row.modified_ms, order_id))
        if k < len(self.by_modified) and self.by_modified[k] == (row.modified_ms, order_id):
            del self.by_modified[k]
        row.modified_ms = self.bump_ms()
        insort(self.by_modified, (row.modified_ms, order_id))
        row.data["LastModifiedAt"] = row.data["UpdatedAt"] = iso(row.modified_ms)
        if history:
            row.data["History"].append(
                {
                    "Created": iso(row.modified_ms),
                    "EventTypeName": "API",
                    "Text": history,
                    "EmployeeName": "Billbee API",
                    "TypeId": 0,
                }
            )

    def touch(self, order_id: int) -> dict[str, Any]:
        row = self._row_for_change(order_id)
        self._touch(row)
        return row.data

    def set_order_number(self, order_id: int, number: str) -> dict[str, Any]:
        """A renumbered order (an edit in the Billbee UI; PATCH /orders/{id} in the spec): the id stays."""
        row = self._row_for_change(order_id)
        old = row.data.get("OrderNumber")
        row.data["OrderNumber"] = number
        if number:
            self.ext_refs.setdefault(number, order_id)
        self._touch(row, f"Auftragsnummer von {old} auf {number} geändert")
        return row.data

    def set_package_type(self, order_id: int, assigned: bool) -> None:
        row = self._row_for_change(order_id)
        row.package_type = assigned
        self._touch(row, "Verpackungstyp zugewiesen" if assigned else "Verpackungstyp entfernt")

    def set_state(self, order_id: int, state: int) -> dict[str, Any]:
        row = self._row_for_change(order_id)
        data = row.data
        old = data["State"]
        self._reserve(data, -1)
        data["State"] = state
        at = self._last_bump_ms + 1
        if state == 2 and not data.get("ConfirmedAt"):
            data["ConfirmedAt"] = iso(max(at, now_ms()))
        if state == 3 and not data.get("PayedAt"):
            data["PayedAt"] = iso(max(at, now_ms()))
            data["PaidAmount"] = round(data["TotalCost"] + data["ShippingCost"], 2)
        if state == 4 and not data.get("ShippedAt"):
            data["ShippedAt"] = iso(max(at, now_ms()))
        self._reserve(data, +1)
        self._touch(row, f"Status von {old} auf {state} geändert")
        return data

    def add_tags(self, order_id: int, tags: list[str], replace: bool) -> list[str]:
        row = self._row_for_change(order_id)
        current: list[str] = [] if replace else list(row.data["Tags"])
        for tag in tags:
            if tag.casefold() not in {t.casefold() for t in current}:
                current.append(tag)
        row.data["Tags"] = current
        self._touch(row)
        return current

    def add_shipment(
        self,
        order_id: int,
        *,
        shipping_id: str,
        provider: ShippingProvider | None,
        product: ShippingProduct | None,
        carrier: int | None,
        shipment_type: int,
        tracking_url: str | None = None,
    ) -> dict[str, Any]:
        row = self._row_for_change(order_id)
        created = self.bump_ms()
        shipment = {
            "BillbeeId": SHIPMENT_ID_BASE + self.n_orders + len(self.shipments),
            "ShippingId": shipping_id,
            "Shipper": provider.name if provider else None,
            "Created": iso(created),
            "TrackingUrl": tracking_url
            or (provider.tracking_url.format(tracking=shipping_id) if provider else None),
            "ShippingProviderId": provider.id if provider else None,
            "ShippingProviderProductId": product.id if product else None,
            "ShippingCarrier": carrier if carrier is not None else (provider.carrier_id if provider else 0),
            "ShipmentType": shipment_type,
        }
        self.shipments.append(shipment)
        self._shipment_meta.append((created, provider.id if provider else None, order_id))
        row.data["ShippingIds"].append(shipment)
        self._touch(row, f"Sendung {shipping_id} hinzugefügt")
        return shipment

    def package_type_assigned(self, order_id: int) -> bool:
        row = self.overlay.get(order_id)
        return bool(row and row.package_type)

    def create_order(self, order: dict[str, Any], created_ms: int) -> dict[str, Any]:
        """Store a new order (already normalised by the app) and give it its ids."""
        number = order.get("OrderNumber") or ""
        shop_id = order["ApiAccountId"]
        for ref in (number, order.get("Id") or ""):
            existing = self.find_by_ext_ref(ref) if ref else None
            if existing is not None and self.get_order(existing, 0)["ApiAccountId"] == shop_id:  # type: ignore[index]
                raise WorldError(f"Order {ref} already exists", code=9, status=400)
        i = self.next_order_index
        self.next_order_index += 1
        order_id = ORDER_ID_BASE + i
        order["BillBeeOrderId"] = order_id
        order["WebUrl"] = f"https://app.billbee.io/app_v2/order/{order_id}"
        for item in order["OrderItems"]:
            item["BillbeeId"] = self._next_item_id
            self._next_item_id += 1
        row = OrderRow(order, created_ms, 0, None)
        self.overlay[order_id] = row
        row.modified_ms = self.bump_ms()
        order["LastModifiedAt"] = order["UpdatedAt"] = iso(row.modified_ms)
        insort(self.by_modified, (row.modified_ms, order_id))
        for ref in (number, order.get("Id") or ""):
            if ref:
                self.ext_refs.setdefault(ref, order_id)
        self._reserve(order, +1)
        return order

    def new_order_skeleton(
        self,
        shop: Shop,
        created: int,
        items: list[dict[str, Any]],
        invoice: dict[str, Any],
        shipping: dict[str, Any],
    ) -> dict[str, Any]:
        return self._order_skeleton(
            order_id=0,
            ext_id="",
            number="",
            state=1,
            shop=shop,
            created=created,
            modified=created,
            items=items,
            invoice=invoice,
            shipping=shipping,
            provider=None,
            product=None,
            customer_id=CUSTOMER_ID_BASE + 900_000,
        )

    # ---- reservations --------------------------------------------------------------------------

    def _reserve(self, order: dict[str, Any], sign: int) -> None:
        if self._reserved is None or order["State"] not in RESERVING_STATES:
            return
        for item in order["OrderItems"]:
            product_id = (item.get("Product") or {}).get("BillbeeId")
            if isinstance(product_id, int) and not item.get("IsCoupon") and not item.get("DontAdjustStock"):
                self._reserved[product_id] = self._reserved.get(product_id, 0.0) + sign * float(
                    item["Quantity"]
                )

    def _reservations(self) -> dict[int, float]:
        """Unfulfilled quantity per product id over open orders, built on first use and kept current."""
        if self._reserved is None:
            reserved: dict[int, float] = {}
            sel = Selection(self.segments, 0, self.n_orders, lambda e: e[0] in RESERVING_STATES)
            excluded = [e for e in self.overlay_base if sel.contains(e)]
            for i in sel.iter_from(0, excluded):
                for idx, qty in self._base_lines(i, _hash("order", self.seed, i)):
                    pid = billbee_product_id(idx)
                    reserved[pid] = reserved.get(pid, 0.0) + qty
            self._reserved = reserved
            for row in self.overlay.values():
                self._reserve(row.data, +1)
        return self._reserved

    # ---- shipments -----------------------------------------------------------------------------

    def _base_shipment(self, i: int, provider: ShippingProvider, product: ShippingProduct) -> dict[str, Any]:
        tracking = self.tracking_number(provider, SHIPMENT_ID_BASE + i)
        return {
            "BillbeeId": SHIPMENT_ID_BASE + i,
            "ShippingId": tracking,
            "Shipper": provider.name,
            "Created": iso(self.order_created_ms(i) + SHIPPED_AFTER_MS),
            "TrackingUrl": provider.tracking_url.format(tracking=tracking),
            "ShippingProviderId": provider.id,
            "ShippingProviderProductId": product.id,
            "ShippingCarrier": provider.carrier_id,
            "ShipmentType": 0,
        }

    @staticmethod
    def tracking_number(provider: ShippingProvider, salt: int) -> str:
        digits = f"{_hash('tracking', salt) % 10**14:014d}"
        if provider.carrier_id == 2:
            return f"0034043{digits[:13]}"
        if provider.carrier_id == 1:
            return digits[:10]
        return digits

    def shipment_page(self, f: ShipmentFilter, page: int, page_size: int) -> tuple[int, list[dict[str, Any]]]:
        n = self.n_orders
        lo, hi = 0, n
        if f.order_id is not None:
            i = f.order_id - ORDER_ID_BASE
            lo, hi = (i, i + 1) if 0 <= i < n else (0, 0)
        if f.min_shipment_id is not None:
            lo = max(lo, min(n, f.min_shipment_id - SHIPMENT_ID_BASE))
        shipped_at = self.order_created_ms  # shipment i was created at created(i) + SHIPPED_AFTER_MS
        if f.created_min_ms is not None:
            lo = max(
                lo, self._first_index(n, shipped_at, f.created_min_ms - SHIPPED_AFTER_MS, inclusive=True)
            )
        if f.created_max_ms is not None:
            hi = min(
                hi, self._first_index(n, shipped_at, f.created_max_ms - SHIPPED_AFTER_MS, inclusive=False)
            )
        positions = {p for p, c in enumerate(SHIPPING_CHOICES) if f.provider_id in (None, c[0].id)}
        sel = Selection(self.segments, lo, hi, lambda e: e[0] in SHIPPED_STATES and e[2] in positions)
        created = [
            k
            for k, (at, provider_id, order_id) in enumerate(self._shipment_meta)
            if (f.created_min_ms is None or at >= f.created_min_ms)
            and (f.created_max_ms is None or at <= f.created_max_ms)
            and (f.order_id is None or order_id == f.order_id)
            and (f.min_shipment_id is None or self.shipments[k]["BillbeeId"] >= f.min_shipment_id)
            and (f.provider_id is None or provider_id == f.provider_id)
        ]
        base_total = sel.count()
        total = base_total + len(created)
        out: list[dict[str, Any]] = []
        offset = (page - 1) * page_size
        for rank in range(offset, min(total, offset + page_size)):
            if rank < base_total:
                i = sel.kth(rank)
                assert i is not None
                provider, product, _ = SHIPPING_CHOICES[self.entry(i)[2]]
                out.append(self._base_shipment(i, provider, product))
            else:
                out.append(self.shipments[created[rank - base_total]])
        return total, out

    # ---- summary -------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "products": self.product_count,
            "catalog_products": self.n_products,
            "created_products": len(self.new_product_created),
            "deleted_products": len(self.deleted_products),
            "changed_products": len(self.product_over),
            "orders": self.next_order_index,
            "historic_orders": self.n_orders,
            "created_orders": self.next_order_index - self.n_orders,
            "overlay_orders": len(self.overlay),
            "created_shipments": len(self.shipments),
            "start": iso(self.start_ms),
            "marketplace_skus": self.marketplace_skus,
            "first_order_id": ORDER_ID_BASE,
            "first_product_id": PRODUCT_ID_OFFSET,
            "product_id_base": BILLBEE_ID_BASE,
        }


def label_pdf(lines: list[str]) -> bytes:
    """A tiny valid one-page PDF (A6) showing `lines`, with a correct xref table."""

    def esc(text: str) -> str:
        ascii_text = text.encode("latin-1", "replace").decode("latin-1")
        return ascii_text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    stream = "BT /F1 11 Tf 20 260 Td 14 TL " + " ".join(f"({esc(line)}) '" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 298 420] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream.encode('latin-1'))} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def label_pdf_base64(lines: list[str]) -> str:
    return base64.b64encode(label_pdf(lines)).decode("ascii")


__all__ = [
    "World",
    "WorldError",
    "OrderFilter",
    "ShipmentFilter",
    "ProductCore",
    "PROVIDERS",
    "PROVIDER_BY_ID",
    "SHOPS",
    "SHOP_BY_ID",
    "STOCKS",
    "STOCK_BY_ID",
    "CARRIERS",
    "ORDER_ID_BASE",
    "SHIPMENT_ID_BASE",
    "iso",
    "now_ms",
    "label_pdf",
    "label_pdf_base64",
    "ean13",
    "sku_for",
]
