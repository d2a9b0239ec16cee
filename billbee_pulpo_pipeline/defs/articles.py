"""The Billbee articles of one Billbee/PULPO pair as the products flow knows them: the data the line
resolution (`mapping/articles.py`) needs, read from the state store for the sales-orders and the
stock flow alike.

Sources, both written only by the products flow of the pair (`Flow.catalog`), never by the readers:
- its snapshot `<products slug>.billbee_products` (Billbee id → SKU, type, bill of material), and
- its id mapping `product:<billbee>:<pulpo>` (Billbee id → PULPO product, extra `sku`), which also
  covers articles whose snapshot row is gone or was never stored (the products flow parked them).
Articles neither source knows are not invented here: the caller decides (see `resolve_line`). This
class is the one place that would fetch single articles from Billbee on demand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from billbee_pulpo_pipeline.defs.common import Flow, mapping_kind
from billbee_pulpo_pipeline.defs.products.state import SNAPSHOT
from billbee_pulpo_pipeline.mapping.articles import MAX_DEPTH, Article, article_from_fields
from billbee_pulpo_pipeline.state import StateStore


class ArticleCatalog:
    """Articles by Billbee id, loaded on demand (with the components of bundles) and kept for the run."""

    def __init__(self, flow: Flow, store: StateStore) -> None:
        self.store = store
        self.product_kind = mapping_kind("product", flow)
        self.kit_kind = mapping_kind("kit", flow)
        products = flow.catalog
        self.snapshot = f"{products.slug}.{SNAPSHOT}" if products is not None else None
        self.products_name = products.name if products is not None else None
        # Whether the products flow makes PULPO kits of bundles (`bundles: kit`); without it, no kit exists
        # unless the warehouse made one by hand.
        self.makes_kits = products is not None and products.settings.bundles == "kit"  # type: ignore[union-attr]
        self.articles: dict[str, Article] = {}
        self._asked: set[str] = set()

    def load(self, ids: Iterable[str | int | None]) -> dict[str, Article]:
        """The known articles among `ids` and their bundles' components (all loaded so far)."""
        wanted = {str(i) for i in ids if i not in (None, "")} - self._asked
        for _ in range(MAX_DEPTH + 1):
            if not wanted:
                break
            self._asked |= wanted
            rows = self.store.snapshot_rows(self.snapshot, wanted) if self.snapshot else {}
            mapped = self.store.get_mappings(self.product_kind, wanted)
            for key in wanted:
                mapping = mapped.get(key)
                pulpo_id = int(mapping.pulpo_id) if mapping is not None and mapping.pulpo_id.isdigit() else None
                if key in rows:
                    self.articles[key] = article_from_fields(json.loads(rows[key]), pulpo_id)
                elif mapping is not None:
                    self.articles[key] = Article(key, (mapping.extra or {}).get("sku"), (), pulpo_id)
            wanted = {c.article_id for key in wanted if (a := self.articles.get(key)) is not None
                      for c in a.components if c.article_id} - self._asked
        return self.articles

    def kits(self, bundle_ids: Iterable[str]) -> set[str]:
        """The bundles among `bundle_ids` whose PULPO kit the products flow has made."""
        ids = list(bundle_ids)
        return set(self.store.get_mappings(self.kit_kind, ids)) if ids else set()
