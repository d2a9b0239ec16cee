"""Dagster definitions of the 'status_updates' integration type."""
