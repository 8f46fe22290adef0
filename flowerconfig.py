"""Flower's configuration file: `celery -A celery_app flower` reads ./flowerconfig.py at start-up.

Run Flower from the project root (the Docker image, the systemd units and `make run` all do) so that
this file is found. It refuses to start an unauthenticated Flower: see flowerauth.py
and docs/operations.md, "Monitoring". Every other option comes from FLOWER_* environment variables
(FLOWER_PORT, FLOWER_ADDRESS, FLOWER_URL_PREFIX, ...), as Flower documents.
"""

from flowerauth import enforce

enforce()

# Keep Flower's in-memory task list bounded (its default is 100,000 tasks); the jobs enqueue a
# few hundred small tasks a night, so 10,000 covers weeks of history.
max_tasks = 10000
# Forget workers that have been offline for a day, so a redeploy does not leave ghosts on the dashboard.
purge_offline_workers = 24 * 3600
