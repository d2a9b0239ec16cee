"""When a sales-order integration went live: the first hourly partition of `billbee_orders`.

Dagster needs the partitions when it loads the definitions, before any run, and that must not open
DuckDB (a code server, a daemon and runs load them at once). So go-live is a marker file,
`$BPP_HOME/go_live/<integration slug>`, holding the hour before the integration's definitions were first
loaded: the partitions page then shows real gaps since go-live, not hundreds of hours that were never
meant to be read. Orders older than go-live are the first state sweep's backlog, not windows.

`start_date` in the integration's settings overrides it. An install that already has a state store but
no marker (it ran before markers existed) keeps the previous fixed start, the first day of the previous
month, so the windows it read stay visible.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from billbee_pulpo_pipeline.config import IntegrationConfig
from billbee_pulpo_pipeline.state.store import DB_FILE_NAME

logger = logging.getLogger(__name__)
GO_LIVE_DIR = "go_live"


def legacy_start(now: datetime | None = None) -> datetime:
    """First day of the previous month (UTC): the fixed start before go-live markers."""
    today = (now or datetime.now(UTC)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (today - timedelta(days=1)).replace(day=1)


def marker_path(home: Path, slug: str) -> Path:
    return Path(home) / GO_LIVE_DIR / slug


def go_live(home: Path, slug: str, *, create: bool = True, now: datetime | None = None) -> datetime | None:
    """The go-live hour of integration `slug`, from its marker; written now (at the current hour, or the
    legacy start for an install that predates markers) when there is none and `create` is set."""
    path = marker_path(home, slug)
    if path.exists():
        try:
            return datetime.fromisoformat(path.read_text().strip()).astimezone(UTC)
        except ValueError:
            logger.warning("go-live marker %s is unreadable; writing it again", path)
    if not create:
        return None
    if (Path(home) / DB_FILE_NAME).exists():   # an install from before markers keeps its old start
        moment = legacy_start(now)
    else:   # the hour before the first load: a first sync just after the turn of an hour still has the hour
        # that just ended (orders paid in its last minutes), and a run scheduled for it never misses its partition
        hour = (now or datetime.now(UTC)).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        moment = hour - timedelta(hours=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{slug}.{os.getpid()}")
        temporary.write_text(moment.isoformat() + "\n")
        if path.exists():  # another process wrote it meanwhile: the first one wins
            temporary.unlink()
            return go_live(home, slug, create=False) or moment
        os.replace(temporary, path)
    except OSError as exc:
        logger.warning("cannot write the go-live marker %s (%s); partitions start at %s", path, exc, moment)
    return moment


def with_go_live(config: IntegrationConfig, home: Path, *, create: bool = True) -> IntegrationConfig:
    """`config` with `start_date` set on every sales-order integration that has none: its go-live."""
    integrations = []
    for integration in config.integrations:
        settings = integration.settings
        if integration.type == "sales_orders" and getattr(settings, "start_date", None) is None:
            start = go_live(home, integration.slug, create=create)
            if start is not None:
                integration = integration.model_copy(
                    update={"settings": settings.model_copy(update={"start_date": start})})
        integrations.append(integration)
    return config.model_copy(update={"integrations": integrations})
