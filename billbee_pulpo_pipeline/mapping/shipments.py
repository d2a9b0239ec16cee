"""PULPO box trackings → Billbee shipments: carrier matching, tracking codes, how often to look
(pure functions, no I/O).

Carrier: PULPO's `carrier_code` is free text set by the label service ("dhl", "dhl_de", "DPD",
"dhl_express", "ups"); Billbee wants a `CarrierId` from its carrier list. In this order:
1. `carrier_map` (config), by the exact code or case-insensitively: an id is used as it is, a name
   is looked up in Billbee's list like a code would be;
2. Billbee's list by name, compared as words (case, umlauts and punctuation ignored): equal words
   match ("DHL Express" = "dhl_express"), else the carrier whose words start the code wins, the
   longest such one ("dhl_de" → DHL, "dhl_express_de" → DHL Express, "dpd_classic" → DPD);
3. nothing matched: the shipment is sent without a carrier (Billbee then takes the shipping
   provider's) and counted as `carrier_unmapped`, so the merchant can add a `carrier_map` row.
Letters glued together ("dhlexpress") or other names for the same carrier ("deutsche_post" for
DPAG) do not match on purpose: guessing wrong would send the tracking to the wrong carrier's site.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

_TRANSLITERATION = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})

FIRST_RECHECK = timedelta(minutes=5)   # a packing order without (all) trackings is looked at again after …
LONGEST_RECHECK = timedelta(hours=1)   # … doubling each time, up to this


def carrier_words(name: str | None) -> tuple[str, ...]:
    """A carrier name or code as comparable words: `Österr. Post` → ('oesterr', 'post')."""
    text = unicodedata.normalize("NFC", name or "").casefold().translate(_TRANSLITERATION)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return tuple(word for word in re.split(r"[^a-z0-9]+", text) if word)


@dataclass(frozen=True)
class CarrierMatch:
    carrier_id: int | None
    how: str                 # "carrier_map" | "name" | "unmapped"
    note: str | None = None  # why nothing matched, for the merchant


def carrier_by_name(name: str | None, carriers: Mapping[int, str]) -> int | None:
    """Billbee carrier id for a name or code (rule 2 of the module doc), or None."""
    words = carrier_words(name)
    if not words:
        return None
    best: tuple[int, int] | None = None   # (number of words, carrier id)
    for carrier_id, carrier_name in sorted(carriers.items()):
        candidate = carrier_words(carrier_name)
        if not candidate:
            continue
        if candidate == words:
            return carrier_id
        if words[:len(candidate)] == candidate and (best is None or len(candidate) > best[0]):
            best = (len(candidate), carrier_id)
    return best[1] if best else None


def match_carrier(code: str | None, carriers: Mapping[int, str],
                  carrier_map: Mapping[str, int | str]) -> CarrierMatch:
    """The Billbee carrier for a PULPO `carrier_code` (see the module doc)."""
    mapped = _mapped(code, carrier_map)
    if mapped is not None:
        if isinstance(mapped, int):
            return CarrierMatch(mapped, "carrier_map")
        found = carrier_by_name(mapped, carriers)
        if found is not None:
            return CarrierMatch(found, "carrier_map")
        return CarrierMatch(None, "unmapped", f"carrier_map maps '{code}' to '{mapped}', which is not in "
                                              "Billbee's carrier list")
    found = carrier_by_name(code, carriers)
    if found is not None:
        return CarrierMatch(found, "name")
    if not (code or "").strip():
        return CarrierMatch(None, "unmapped", "PULPO names no carrier for this tracking")
    return CarrierMatch(None, "unmapped", f"carrier '{code}' matches no Billbee carrier: add it to carrier_map")


def _mapped(code: str | None, carrier_map: Mapping[str, int | str]) -> int | str | None:
    if code is None:
        return None
    key = code.strip()
    if key in carrier_map:
        return carrier_map[key]
    folded = {str(k).casefold(): v for k, v in carrier_map.items()}
    return folded.get(key.casefold())


@dataclass(frozen=True)
class Tracking:
    """One tracking code of a box, as the label service wrote it to PULPO."""

    box_id: int
    code: str
    carrier_code: str | None
    tracking_url: str | None


def box_trackings(box_id: int, rows: Iterable[Any]) -> tuple[list[Tracking], list[str]]:
    """The tracking codes of one box (rows: PULPO `ShipmentTracking`s) and the label service's error
    messages of rows without a code (a failed label, e.g. Sendcloud's address check)."""
    codes: list[Tracking] = []
    errors: list[str] = []
    for row in rows:
        code = (getattr(row, "tracking_code", None) or "").strip()
        if code:
            if code not in {t.code for t in codes}:
                codes.append(Tracking(box_id, code, getattr(row, "carrier_code", None),
                                      getattr(row, "tracking_url", None)))
        elif getattr(row, "error_message", None):
            errors.append(str(row.error_message))
    return codes, errors


def recheck_after(checks: int) -> timedelta:
    """How long to wait before looking at a packing order's boxes again, after `checks` looks:
    5 min, 10, 20, 40, then hourly. Labels usually come within minutes of packing; the longer waits
    keep a box that never gets one from costing a PULPO call per box on every tick."""
    return min(FIRST_RECHECK * (2 ** max(checks - 1, 0)), LONGEST_RECHECK)


def shipment_ledger_key(billbee_order_id: str | int, tracking_code: str) -> str:
    """Idempotency key of adding one tracking code to one Billbee order."""
    return f"shipment:{billbee_order_id}:{tracking_code}"
