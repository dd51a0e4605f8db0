"""Prefect flows over the pipeline's steps: orchestration only, nothing numeric.

Importing this package turns Prefect's telemetry off and gives its embedded server a
startup timeout that holds on a busy 2-core machine (docs/design.md), unless the
environment already says otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
