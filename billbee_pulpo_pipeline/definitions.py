"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here.

The integration config comes from $BPP_CONFIG (default ./integrations.yaml). Secrets are not read
here: they reach the run worker as env vars through `dagster.EnvVar`.
"""

from __future__ import annotations

from billbee_pulpo_pipeline.config import ConfigError, load_config
from billbee_pulpo_pipeline.defs.factory import build_definitions
from billbee_pulpo_pipeline.state import bpp_home

try:
    _config = load_config(require_env=False)
except ConfigError as error:
    # The UI shows a code location's load error with its stack: raised afresh here, that is the problems
    # and this one line, not a walk through the loader's internals.
    raise ConfigError(error.path, error.problems) from None

defs = build_definitions(_config, bpp_home())
