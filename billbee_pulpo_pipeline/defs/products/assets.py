"""Products (Billbee → PULPO): the Billbee product snapshot, its plausibility check, and the group.

Billbee has no "modified since" filter for products, so every sync is a full scan at the largest
page size (250): the fewest calls a full read can take. Pages are read through the client's lean
path (pydantic-core validates the bytes in Rust and builds only the fields the flow reads), so a
200,000-product re-scan costs seconds of CPU, not tens. The snapshot keeps a content hash per
product over those fields (see `SnapshotScan`), so the writer downstream looks only at what is new
or changed.

Billbee pages by offset, so a product deleted while the scan pages shifts every later page by one and
an unrelated product slides onto a page already read: missed, it would look deleted and be
deactivated in PULPO. The scan notices it as the order reader does, with the same implementation
(`read_complete_window`: TotalRows changes between pages, or fewer unique ids than TotalRows) and
reads the catalogue again, up to `SCAN_PASSES` times; only a consistent pass decides what was removed.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import gc
import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple

import dagster as dg

from billbee_pulpo_pipeline.clients.billbee import ResultPage
from billbee_pulpo_pipeline.clients.billbee.models import LeanProduct
from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    WriteConfig,
    canonical_json,
    count_metadata,
    flow_definitions,
    preview_table,
    record_success,
    ui_metadata,
)
from billbee_pulpo_pipeline.defs.products.state import SNAPSHOT_QUARANTINE, Comparison, ProductDatasets
from billbee_pulpo_pipeline.defs.products.writer import ProductWriter, accounted_check
from billbee_pulpo_pipeline.defs.sales_orders.windows import WindowReadError, read_complete_window
from billbee_pulpo_pipeline.defs.write_behind import WriteBehind
from billbee_pulpo_pipeline.mapping.products import product_fields, unlinkable_reason
from billbee_pulpo_pipeline.progress import Progress
from billbee_pulpo_pipeline.state import StateStore

PLAUSIBLE_CHECK = "snapshot_plausible"
ACCOUNTED_CHECK = "all_products_accounted_for"
STORE_EVERY = 5000  # changed products held before they are stored, even while the writer is busy
HASH_VERSION = "lean-v1"  # part of every hash: a new scheme re-evaluates every product once
LEAN_JSON = LeanProduct.__pydantic_serializer__  # bytes straight from pydantic-core
SCAN_PASSES = 3  # full reads of the catalogue before a run gives up on a catalogue that keeps changing


class _SeenId(NamedTuple):
    """What `read_complete_window` keeps of a product: its id (the scan holds the rest)."""

    BillBeeOrderId: int
    LastModifiedAt: datetime | None = None


def build(flow: Flow) -> dg.Definitions:
    return flow_definitions(flow, [products_assets(flow)], "Billbee products → PULPO.")


def products_assets(flow: Flow) -> dg.AssetsDefinition:
    """`billbee_products` and `pulpo_products`: two assets, one op, so that a run materializing both
    writes to PULPO while the Billbee read waits for its pacer (see `write_behind.py`). Either can
    be materialized alone: the snapshot without writing, the writer from the stored snapshot."""
    settings = flow.integration.settings
    language = getattr(settings, "title_language", "de")
    deactivate_removed = bool(getattr(settings, "deactivate_removed", True))
    snapshot_key, writer_key = flow.key("billbee_products"), flow.key("pulpo_products")

    @dg.multi_asset(
        name=f"{flow.slug}__products",
        specs=[
            dg.AssetSpec(snapshot_key, group_name=flow.slug, kinds={"billbee", "duckdb"}, tags=flow.tags,
                         skippable=True, description=SNAPSHOT_DESCRIPTION.format(
                             account=flow.source.name, flow=flow.name, check=PLAUSIBLE_CHECK)),
            dg.AssetSpec(writer_key, group_name=flow.slug, kinds={"pulpo", "duckdb"}, tags=flow.tags,
                         deps=[snapshot_key], skippable=True,
                         description=WRITER_DESCRIPTION.format(user=flow.target.name, flow=flow.name)),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                PLAUSIBLE_CHECK, asset=snapshot_key, blocking=True,
                description="Holds back deactivations in PULPO when the snapshot looks like an incomplete "
                            "Billbee answer: empty while PULPO has products of this integration, or missing "
                            "more than half of the products PULPO acknowledged."),
            dg.AssetCheckSpec(
                ACCOUNTED_CHECK, asset=writer_key,
                description="Every product of the Billbee snapshot is in PULPO with its current content, or in "
                            "quarantine with a reason (or a bundle skipped by `bundles: skip`)."),
        ],
        can_subset=True,
        required_resource_keys={flow.source_key, flow.target_key, STATE_STORE_KEY},
    )
    def products(context: dg.AssetExecutionContext, config: WriteConfig) -> Iterator[dg.MaterializeResult]:
        store = context.resources.state_store.store()
        selected = context.selected_asset_keys
        writer = None
        if writer_key in selected:
            pulpo = getattr(context.resources, flow.target_key).client()
            writer_meter = CallMeter(pulpo=pulpo.stats)
            writer = ProductWriter(flow, pulpo, store, dry_run=config.dry_run, log=context.log)
        if snapshot_key in selected:
            early_writes = writer.write_pass if writer is not None and not config.dry_run else None
            snapshot, check = take_snapshot(context, flow, store, language, deactivate_removed, early_writes)
            record_success(context, store, flow, snapshot_key.path[-1], ui_metadata(snapshot))
            yield dg.MaterializeResult(asset_key=snapshot_key, metadata=ui_metadata(snapshot), check_results=[check])
            if not check.passed:
                if writer is not None and writer.counts:
                    context.log.warning(f"{flow.name}: written while reading, before the check failed: "
                                        f"{dict(writer.counts)}; nothing was deactivated")
                return  # the failed blocking check fails the run: no deactivation on a doubtful snapshot
        if writer is not None:
            comparison = writer.run()
            metadata = ui_metadata({**writer.metadata(), **writer_meter.metadata()})
            record_success(context, store, flow, writer_key.path[-1], metadata)
            yield dg.MaterializeResult(asset_key=writer_key, metadata=metadata,
                                       check_results=[accounted_check(comparison, writer)])

    return products


SNAPSHOT_DESCRIPTION = """All products of Billbee account '{account}' ({flow}).

Full scan of `GET /products` (250 per page), stored in DuckDB with a content hash per product over
the fields the flow reads. Products without SKU or with a SKU another product already uses go to
quarantine with the reason; the rest go on. The blocking check `{check}` holds back deactivations
in PULPO when the snapshot would deactivate most products."""

WRITER_DESCRIPTION = """Products of PULPO user '{user}' kept equal to the Billbee snapshot ({flow}).

Writes only what differs from what PULPO acknowledged: new products (bulk create, after looking
their SKUs up in PULPO so nothing is created twice), changed ones (bulk update), bundles as PULPO
kits, and deactivates products deleted in Billbee (`deactivate_removed`). PULPO's refusals go to
quarantine with its reason; the rest goes on. In a run with the snapshot, new and changed products
are written while Billbee is still being read. Launchpad `dry_run: true` shows the plan, writes nothing."""


def take_snapshot(context: dg.AssetExecutionContext, flow: Flow, store: StateStore, language: str,
                  deactivate_removed: bool, early_writes: Callable[[], None] | None,
                  ) -> tuple[dict[str, dg.MetadataValue], dg.AssetCheckResult]:
    """Scan Billbee into the snapshot; with `early_writes`, changes are stored page by page and the
    writer's early passes run meanwhile. Returns the metadata and the plausibility check."""
    client = getattr(context.resources, flow.source_key).client()
    meter = CallMeter(billbee=client.stats)
    datasets = ProductDatasets(store, flow)
    scan: SnapshotScan | None = None   # the current pass's; only a consistent last pass decides removals
    counts: Counter[str] = Counter()

    def store_changes(scan: SnapshotScan) -> bool:
        rows = scan.take_changed_rows()
        if rows:
            diff = store.upsert_snapshot(datasets.snapshot, rows)
            counts.update(new=diff.new, changed=diff.changed, unchanged=diff.unchanged)
        return bool(rows)

    progress = Progress(flow.name, "products", context.log.info)

    def passes(behind: WriteBehind) -> Callable[[], Iterator[ResultPage[Any]]]:
        def pages() -> Iterator[ResultPage[Any]]:
            """One pass over the catalogue into a fresh scan (a discarded pass's changes were real content
            and stay stored); yields the ids of each page for the shift check."""
            nonlocal scan
            if scan is not None:
                store_changes(scan)
            scan = SnapshotScan(language, datasets.hash_prefixes(datasets.snapshot))
            for page in client.iter_product_pages_lean(page_size=250):
                scan.add(page.items)
                if scan.pending_rows and (behind.idle or scan.pending_rows >= STORE_EVERY) and store_changes(scan):
                    behind.wake()  # only when something changed: a pass over nothing still costs a compare
                progress.update(scan.total, page.paging.TotalRows if page.paging else None)
                yield ResultPage(number=page.number, items=[_SeenId(int(p.Id)) for p in page.items],
                                 paging=page.paging)
        return pages

    def shifted(message: str) -> None:
        context.log.warning(f"{flow.name}: the Billbee catalogue changed while it was paged "
                            f"({message.split(';')[0]}); reading it again, nothing is taken as deleted from that pass")

    with quiet_gc(), WriteBehind(early_writes, name=f"{flow.slug}-pulpo-writes") as behind:
        try:
            read = read_complete_window(passes(behind), max_passes=SCAN_PASSES, on_shift=shifted)
        except WindowReadError as exc:
            raise dg.Failure(
                description=f"{flow.name}: the Billbee catalogue kept changing while it was read ({SCAN_PASSES} "
                            "full reads); nothing was deactivated in PULPO. The next run reads it again.",
                metadata={"shifts": dg.MetadataValue.text(str(exc))}) from exc
        assert scan is not None  # read_complete_window made at least one pass
        store_changes(scan)
    progress.finish()
    removed = scan.removed_keys()
    if removed:
        store.delete_snapshot_rows(datasets.snapshot, removed)
    store.quarantine_sync(flow.slug, SNAPSHOT_QUARANTINE,
                          {q["billbee_id"]: (q["reason"], q) for q in scan.quarantined})
    check = plausibility(datasets.compare(), flow, deactivate_removed)
    metadata = {
        **count_metadata(total=scan.total, new=counts["new"], changed=counts["changed"], removed=len(removed),
                         unchanged=scan.unchanged + counts["unchanged"], quarantined=len(scan.quarantined),
                         records_read=scan.total, scan_rereads=read.rereads),
        **meter.metadata(),
        "quarantine_preview": preview_table(scan.quarantined),
    }
    return metadata, check


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Keep the cyclic garbage collector out of a scan.

    A 200,000-product scan allocates ~1M short-lived containers (models, lists) that reference
    counting frees on its own (they form no cycles); yet they trigger collections, and each full one
    walks every object Dagster, pandas and pydantic hold: ~1.5-2 s of CPU per scan. The process's
    objects are frozen out of the collector's sight and collection pauses until the scan is done.
    """
    gc.freeze()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.unfreeze()


class SnapshotScan:
    """Turns pages of `LeanProduct` into changes of the stored snapshot, cheaply enough for 200,000.

    The hash of a product is sha256 over its lean JSON (serialised by pydantic-core, in Rust), so an
    unchanged product costs no Python mapping and no row at all: it is compared with the stored hash
    (on its first 60 bits, so 200,000 stored hashes take ~20 MB) and only counted. Products whose
    hash differs get their payload (`product_fields` as JSON) and are upserted; stored products the
    scan did not see are deleted. That is `replace_snapshot` without moving 200,000 unchanged rows
    through DuckDB. Whether a change matters to PULPO (say, the English title while PULPO gets the
    German one) is the writer's question: it compares the PULPO payload and writes only real changes.
    """

    def __init__(self, language: str, stored: dict[int, int]) -> None:
        self.language = language
        self.prefix = f"{HASH_VERSION}:{language}:".encode()
        self.stored = stored  # popped as products are seen: what is left was removed in Billbee
        self.seen: set[int] = set()
        self.changed: dict[str, tuple[str, str]] = {}
        self.unchanged = 0
        self.quarantined: list[dict[str, str]] = []
        self.sku_owner: dict[str, int] = {}

    @property
    def total(self) -> int:
        return len(self.seen)

    def add(self, products: list[LeanProduct]) -> None:
        seen, stored, sku_owner = self.seen, self.stored, self.sku_owner
        for product in products:
            ident = int(product.Id)
            if ident in seen:
                continue  # a page repeated a product: the catalogue shifted while it was paged
            seen.add(ident)
            sku = (product.SKU or "").strip()
            owner = sku_owner.get(sku) if sku else None
            if not sku or (owner is not None and owner != ident):
                self._quarantine(str(ident), product.SKU, owner)
                continue
            sku_owner[sku] = ident
            digest = hashlib.sha256(self.prefix + LEAN_JSON.to_json(product)).digest()
            if stored.pop(ident, None) == int.from_bytes(digest[:8], "big") >> 4:  # the first 60 bits
                self.unchanged += 1
            else:
                self.changed[str(ident)] = (digest.hex(), canonical_json(product_fields(product, self.language)))

    def _quarantine(self, key: str, sku: str | None, owner: int | None) -> None:
        reason = unlinkable_reason({"billbee_id": key, "sku": sku}, {(sku or "").strip(): str(owner)} if owner else {})
        self.quarantined.append({"billbee_id": key, "sku": sku or "", "reason": reason or "unlinkable"})

    @property
    def pending_rows(self) -> int:
        return len(self.changed)

    def take_changed_rows(self) -> list[tuple[str, str, str]]:
        """The changed products since the last call, as snapshot rows (and forget them)."""
        rows = [(key, digest, payload) for key, (digest, payload) in self.changed.items()]
        self.changed = {}
        return rows

    def removed_keys(self) -> list[str]:
        return [str(key) for key in self.stored]


def plausibility(comparison: Comparison, flow: Flow, deactivate_removed: bool) -> dg.AssetCheckResult:
    """Refuse a snapshot that looks like a Billbee outage rather than the catalogue."""
    acknowledged, removed = comparison.acknowledged_total, len(comparison.removed)
    problem = None
    if comparison.snapshot_total == 0 and acknowledged:
        problem = f"the snapshot is empty, while PULPO holds {acknowledged:,} products of this integration"
    elif deactivate_removed and acknowledged and removed * 2 > acknowledged:
        problem = (f"{removed:,} of the {acknowledged:,} products PULPO holds for this integration are missing "
                   "from the snapshot; writing it would deactivate more than half of them")
    metadata = {"snapshot_products": dg.MetadataValue.int(comparison.snapshot_total),
                "acknowledged_by_pulpo": dg.MetadataValue.int(acknowledged),
                "would_deactivate": dg.MetadataValue.int(removed if deactivate_removed else 0)}
    if problem is None:
        return dg.AssetCheckResult(asset_key=flow.key("billbee_products"), check_name=PLAUSIBLE_CHECK,
                                   passed=True, metadata=metadata,
                                   description="snapshot is plausible: deactivations in PULPO may run")
    return dg.AssetCheckResult(
        asset_key=flow.key("billbee_products"), check_name=PLAUSIBLE_CHECK, passed=False,
        severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
        description=f"Nothing was deactivated in PULPO: {problem}. This is what an incomplete Billbee answer "
                    "looks like (an outage, another API user, a changed account). Check the products in "
                    "Billbee. If they really were deleted, materialize "
                    f"`{flow.key('pulpo_products').to_user_string()}` on its own (this check guards only runs "
                    "that take a new snapshot), or set `deactivate_removed: false` to leave them active.",
    )
