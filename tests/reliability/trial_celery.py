"""The project's Celery app, with broker transport options a trial may override.

    celery -A tests.reliability.trial_celery worker ...

TRIAL_BROKER_OPTIONS (JSON) is merged into CELERY_BROKER_TRANSPORT_OPTIONS: documented kombu Redis
options such as `visibility_timeout` (trial 7: a message redelivered after a late ack) and
`unacked_restore_interval` / `unacked_restore_throttle` (so a restarted worker sweeps the unacked
messages of a dead one within a second instead of kombu's default 10-100 s). Nothing else changes.
"""

import json
import os

from celery_app import app

_options = json.loads(os.environ.get("TRIAL_BROKER_OPTIONS") or "{}")
if _options:
    app.conf.broker_transport_options = {**(app.conf.broker_transport_options or {}), **_options}

__all__ = ["app"]
