"""Loopback sandboxes of the Billbee and PULPO APIs, with a simulated shop and warehouse."""
