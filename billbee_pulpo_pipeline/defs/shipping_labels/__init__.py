"""Dagster definitions of the 'shipping_labels' integration type."""
