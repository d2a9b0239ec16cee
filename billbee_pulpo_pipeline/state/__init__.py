"""Local pipeline state in DuckDB: snapshots, cursors, id mappings, write ledger, quarantine."""

from billbee_pulpo_pipeline.state.store import (
    DB_FILE_NAME,
    LEDGER_STATUSES,
    SCHEMA_VERSION,
    IdMapping,
    LedgerEntry,
    LedgerFinish,
    LedgerStart,
    QuarantineEntry,
    SnapshotDiff,
    StateStore,
    StateStoreError,
    SyncRecord,
    bpp_home,
    canonical_json,
    snapshot_row,
)

__all__ = [
    "DB_FILE_NAME",
    "LEDGER_STATUSES",
    "SCHEMA_VERSION",
    "IdMapping",
    "LedgerEntry",
    "LedgerFinish",
    "LedgerStart",
    "QuarantineEntry",
    "SnapshotDiff",
    "StateStore",
    "StateStoreError",
    "SyncRecord",
    "bpp_home",
    "canonical_json",
    "snapshot_row",
]
