"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here.

The integration config comes from $BPP_CONFIG (default ./integrations.yaml). Secrets are not read
here: they reach the run worker as env vars through `dagster.EnvVar`.
"""

from __future__ import annotations

from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.factory import build_definitions
from billbee_pulpo_pipeline.state import bpp_home

defs = build_definitions(load_config(require_env=False), bpp_home())
