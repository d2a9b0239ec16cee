"""Dagster definitions of the 'products' integration type."""
