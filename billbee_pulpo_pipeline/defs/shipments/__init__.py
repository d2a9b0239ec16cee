"""Dagster definitions of the 'shipments' integration type."""
