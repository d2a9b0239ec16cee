"""The credentials the sandboxes accept. They are not secrets: they only open the loopback sandboxes.

`billbee-pulpo demo` and the tests export them as the env vars the example config references.
"""

from __future__ import annotations

BILLBEE_USERNAME = "shop@example.com"
BILLBEE_API_PASSWORD = "sandbox-api-password"
BILLBEE_API_KEY = "sandbox-api-key"

PULPO_USERNAME = "demo_api"
PULPO_PASSWORD = "sandbox-password"

# The simulated shop and warehouse use their own identity, so their calls never eat the product's
# throttling budget and never show up in the product's request counts.
SIMULATOR_HEADERS = {"X-Sandbox-Actor": "simulator"}


def sandbox_env(billbee_url: str, pulpo_url: str) -> dict[str, str]:
    """Env vars that point `integrations.example.yaml` at running sandboxes."""
    return {
        "BILLBEE_BASE_URL": billbee_url,
        "BILLBEE_USERNAME": BILLBEE_USERNAME,
        "BILLBEE_API_PASSWORD": BILLBEE_API_PASSWORD,
        "BILLBEE_API_KEY": BILLBEE_API_KEY,
        "PULPO_BASE_URL": pulpo_url,
        "PULPO_USERNAME": PULPO_USERNAME,
        "PULPO_PASSWORD": PULPO_PASSWORD,
    }
