"""Dagster definitions of the 'stock' integration type."""
