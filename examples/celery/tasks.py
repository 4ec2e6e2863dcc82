"""A Celery app whose prefork pool processes are each a Prometheus target.

    WORKERSD_JOB=tasks CELERY_BROKER=redis://127.0.0.1:6379/0 \
        celery -A tasks worker --concurrency=4 --max-tasks-per-child=100

workersd.celery.setup registers every pool process with the workersd agent
as it starts and deregisters it after a final scrape as it exits, and counts
every task: celery_tasks_total{task,outcome} and
celery_task_seconds_total{task}, whose running tasks are accounted at every
scrape.
"""

import os
import sys
import time

try:
    import workersd.celery
except ImportError:  # run from a checkout, the package not installed
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python", "src"))
    import workersd.celery

from celery import Celery

broker = os.environ.get("CELERY_BROKER", "redis://127.0.0.1:6379/0")
app = Celery("tasks", broker=broker, backend=broker)
# One task at a time per process: a long task does not hold short ones
# back in its process' prefetch.
app.conf.worker_prefetch_multiplier = 1
app.conf.task_acks_late = True

workersd.celery.setup(app)


@app.task
def work(seconds=0.0):
    """Some work: seconds of it."""
    time.sleep(seconds)
    return os.getpid()
