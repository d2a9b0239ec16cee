"""Billbee order states: ids and the German names the Billbee UI shows (notes/billbee-api.md §5.7)."""

from __future__ import annotations

import unicodedata

ORDER_STATES: dict[int, str] = {
    1: "Bestellt",
    2: "Bestätigt",
    3: "Bezahlt",
    4: "Versendet",
    5: "Reklamation",
    6: "Gelöscht",
    7: "Abgeschlossen",
    8: "Storniert",
    9: "Archiviert",
    10: "Bewertet",
    11: "Angemahnt",
    12: "2. Mahnung",
    13: "Gepackt",
    14: "Angeboten",
    15: "Zahlungserinnerung",
    16: "Im Fulfillment",
    17: "Retoure",
}

# Other spellings merchants meet: English API names, older UI labels, SDK enum names.
_ALIASES: dict[str, int] = {
    "ordered": 1, "confirmed": 2, "paid": 3, "zahlung erhalten": 3, "shipped": 4, "reclamation": 5,
    "deleted": 6, "closed": 7, "canceled": 8, "cancelled": 8, "archived": 9, "rated": 10,
    "mahnung": 11, "1. mahnung": 11, "demand note": 11, "demand note 2": 12, "mahnung 2": 12,
    "packed": 13, "offered": 14, "payment reminder": 15, "fulfilling": 16, "return": 17,
}

# States in which Billbee has already reserved (subtracted) stock for an order that is not shipped.
DEFAULT_RESERVING_STATES: tuple[int, ...] = (1, 2, 3, 11, 12, 15, 13, 16)


def _normalise(name: str) -> str:
    return " ".join(unicodedata.normalize("NFC", name).casefold().replace("_", " ").split())


_BY_NAME: dict[str, int] = {_normalise(n): i for i, n in ORDER_STATES.items()} | _ALIASES


def state_id(value: str | int) -> int:
    """The state id for a German name, an alias or an id; `ValueError` naming the valid names otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a Billbee order state")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        number = int(value)
        if number in ORDER_STATES:
            return number
        raise ValueError(f"{number} is not a Billbee order state id (valid: 1-17)")
    found = _BY_NAME.get(_normalise(str(value)))
    if found is None:
        names = ", ".join(ORDER_STATES.values())
        raise ValueError(f"'{value}' is not a Billbee order state (known: {names}; or an id 1-17)")
    return found


def state_name(state: int) -> str:
    return ORDER_STATES.get(state, f"state {state}")
