"""Plain HTTP clients for Billbee and PULPO (no Dagster imports)."""
