"""Dagster definitions of the 'sales_orders' integration type."""
