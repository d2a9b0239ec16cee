"""Pure mapping functions between Billbee and PULPO records (no I/O, no Dagster)."""
