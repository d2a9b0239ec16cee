"""Products (Billbee → PULPO): the Billbee product snapshot.

Billbee has no "modified since" filter for products, so every sync is a full scan at the largest
page size (250): the fewest calls a full read can take. The snapshot keeps a content hash of the
fields the flow transfers, so the writer downstream sends only what is new or changed.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import dagster as dg

from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    canonical_json,
    count_metadata,
    fingerprint,
    flow_definitions,
    preview_table,
)
from billbee_pulpo_pipeline.mapping.products import product_fields, unlinkable_reason


def build(flow: Flow) -> dg.Definitions:
    settings = flow.integration.settings
    language = getattr(settings, "title_language", "de")

    @dg.asset(
        key=flow.key("billbee_products"),
        group_name=flow.slug,
        kinds={"billbee", "duckdb"},
        required_resource_keys={flow.source_key, STATE_STORE_KEY},
        tags=flow.tags,
        description=f"""All products of Billbee account '{flow.source.name}' ({flow.name}).

Full scan of `GET /products` (250 per page), stored in DuckDB with a content hash per product over
the fields sent to PULPO. Products without SKU or with a SKU another product already uses go to
quarantine with the reason; the rest go on.""",
    )
    def billbee_products(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        client = getattr(context.resources, flow.source_key).client()
        store = context.resources.state_store.store()
        meter = CallMeter(billbee=client.stats)
        rows: list[tuple[str, str, str]] = []
        quarantined: list[dict[str, str]] = []
        sku_owner: dict[str, str] = {}
        for product in client.iter_products(page_size=250):
            fields = product_fields(product, language)
            reason = unlinkable_reason(fields, sku_owner)
            if reason is not None:
                quarantined.append({"billbee_id": fields["billbee_id"], "sku": fields["sku"] or "", "reason": reason})
                continue
            sku_owner[fields["sku"].strip()] = fields["billbee_id"]
            rows.append((fields["billbee_id"], fingerprint(fields), canonical_json(fields)))
            if len(rows) % 10_000 == 0:
                context.log.info(f"{flow.name}: read {len(rows):,} products")
        diff = store.replace_snapshot(flow.dataset("billbee_products"), rows)
        store.quarantine_sync(flow.slug, "product", {q["billbee_id"]: (q["reason"], q) for q in quarantined})
        return dg.MaterializeResult(metadata={
            **count_metadata(total=len(rows) + len(quarantined), new=diff.new, changed=diff.changed,
                             removed=diff.removed, unchanged=diff.unchanged, quarantined=len(quarantined),
                             records_read=len(rows) + len(quarantined)),
            **meter.metadata(),
            "quarantine_preview": preview_table(quarantined),
        })

    return flow_definitions(flow, [billbee_products], "Billbee products → PULPO.")
