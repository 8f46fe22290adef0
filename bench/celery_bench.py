"""The bench's Celery worker: the project's app and settings (celery_app), plus one no-op task, the
limit the email task's throughput is measured against (same Redis, same worker, same queue)."""

from celery_app import app

__all__ = ["app", "noop"]


@app.task(name="bench.noop", ignore_result=True)
def noop(item_id=None):
    """Nothing: what a task costs the broker and the worker, and no more."""
    return None
