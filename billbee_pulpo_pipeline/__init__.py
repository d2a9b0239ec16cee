"""Billbee <-> PULPO WMS integration on Dagster and DuckDB."""
