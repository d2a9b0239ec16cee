"""The products flow's view of the state store: the Billbee snapshot against what PULPO acknowledged.

Both are snapshot datasets (key = Billbee product id, hash = content hash); the store compares them
in one hash join inside DuckDB, so a no-op run over 200,000 products moves only counts into Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from billbee_pulpo_pipeline.defs.common import Flow, mapping_kind
from billbee_pulpo_pipeline.state import StateStore

SNAPSHOT = "billbee_products"
ACKNOWLEDGED = "pulpo_products_acknowledged"
# Quarantine kinds: the snapshot parks products it cannot link ("product"), the writer those PULPO
# refused or that wait for something ("product_pulpo"). Separate kinds, because each side replaces
# its whole list after a run and must not resolve the other's entries.
SNAPSHOT_QUARANTINE = "product"
WRITER_QUARANTINE = "product_pulpo"


@dataclass(frozen=True)
class Comparison:
    """The snapshot against the acknowledged dataset. `removed` leaves out products the snapshot
    quarantined (no SKU, duplicate SKU): they still exist in Billbee."""

    new: list[str] = field(repr=False)
    changed: list[str] = field(repr=False)
    removed: list[str] = field(repr=False)
    unchanged: int
    snapshot_total: int
    acknowledged_total: int

    @property
    def pending(self) -> list[str]:
        return self.new + self.changed


class ProductDatasets:
    """Dataset names, mapping kinds and the comparison of one products integration."""

    def __init__(self, store: StateStore, flow: Flow) -> None:
        self.store = store
        self.integration = flow.slug
        self.snapshot = flow.dataset(SNAPSHOT)
        self.acknowledged = flow.dataset(ACKNOWLEDGED)
        self.product_kind = mapping_kind("product", flow)
        self.kit_kind = mapping_kind("kit", flow)

    def compare(self) -> Comparison:
        diff = self.store.compare_snapshots(self.snapshot, self.acknowledged)
        parked = self.store.quarantine_open_keys(self.integration, kind=SNAPSHOT_QUARANTINE,
                                                 record_keys=diff.removed_keys) if diff.removed else set()
        return Comparison(new=diff.new_keys, changed=diff.changed_keys,
                          removed=[k for k in diff.removed_keys if k not in parked], unchanged=diff.unchanged,
                          snapshot_total=diff.new + diff.changed + diff.unchanged,
                          acknowledged_total=diff.changed + diff.unchanged + diff.removed)

    def records(self, dataset: str, keys: list[str]) -> dict[str, tuple[str, str | None]]:
        """key → (hash, payload JSON) of some stored rows."""
        return self.store.snapshot_records(dataset, keys)

    def hash_prefixes(self, dataset: str) -> dict[int, int]:
        """Billbee id -> the first 60 bits of the stored hash, as ints: ~20 MB for 200,000 products,
        where the hex texts take ~90 MB. Non-numeric keys are left out (they then count as changed)."""
        return self.store.snapshot_hash_prefixes(dataset, hex_digits=15)

    def mappings_of(self, keys: Iterable[str]) -> dict[str, str]:
        """Billbee id → PULPO product id for the given Billbee ids (those that have one)."""
        return {key: m.pulpo_id for key, m in self.store.get_mappings(self.product_kind, keys).items()}

    def pulpo_ids_owned_by_others(self, keys: Iterable[str], pulpo_ids: Iterable[str]) -> set[str]:
        """Which of `pulpo_ids` a Billbee product other than `keys` is mapped to (taken over)."""
        gone = set(keys)
        return {pid for pid, mappings in self.store.get_mappings_by_pulpo(self.product_kind, pulpo_ids).items()
                if any(m.billbee_id not in gone for m in mappings)}
