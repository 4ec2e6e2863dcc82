"""Celery's prefork pool: every pool process is its own target.

    import workersd.celery
    workersd.celery.setup(app)

connects to Celery's signals: worker_process_init (in each pool process
after its fork) starts the endpoint and registers; worker_process_shutdown
(in the pool process as it exits: max_tasks_per_child, shutdown) waits for
a final scrape and deregisters. It also counts every task the process runs,
by task name, with prometheus_client:

  celery_tasks_total{task, outcome}   tasks ended ("success", "failure",
                                      "retry", "revoked")
  celery_task_seconds_total{task}     seconds spent in tasks, including
                                      the tasks still running: a Tracer
                                      accounts them at every scrape, so a
                                      20-minute task shows as 1 worker-
                                      second per second while it runs, not
                                      as 1200 s when it ends
  celery_tasks_in_flight              tasks running now

kwargs are Worker's (job, labels, ...); the job defaults to $WORKERSD_JOB,
else the Celery app's main name. registry= puts the task metrics in that
prometheus_client registry instead of the default one, and the endpoint
serves it (unless app= gives the endpoint another WSGI app: then that app
must serve the task metrics).
"""

import os
import threading

from celery import signals

from .endpoint import prometheus_client_app
from .metrics import reset_inherited_metrics
from .tracer import Tracer
from .worker import Worker


class TaskMetrics:
    """The task counters, in a registry (prometheus_client's default unless
    given), and the tracer that accounts running tasks."""

    def __init__(self, registry=None, tracer=None):
        from prometheus_client import REGISTRY, Counter, Gauge

        registry = registry if registry is not None else REGISTRY
        self.tracer = tracer or Tracer()
        self.tasks = Counter("celery_tasks", "Celery tasks ended in this pool process, by outcome.", ["task", "outcome"], registry=registry)
        self.seconds = Counter(
            "celery_task_seconds",
            "Seconds this pool process spent in tasks, running ones included (accounted at every scrape).",
            ["task"],
            registry=registry,
        )
        Gauge("celery_tasks_in_flight", "Celery tasks running in this pool process.", registry=registry).set_function(self.tracer.in_flight)
        self._units = {}
        self._lock = threading.Lock()

    def started(self, task_id, name):
        unit = self.tracer.start(self.seconds.labels(name))
        with self._lock:
            self._units[task_id] = unit

    def ended(self, task_id, name, outcome):
        with self._lock:
            unit = self._units.pop(task_id, None)
        if unit is not None:
            unit.end()
        self.tasks.labels(name, outcome).inc()


_worker = None


def setup(app, registry=None, **kwargs):
    """Connects the signals for app; returns the TaskMetrics."""
    metrics = TaskMetrics(registry)
    kwargs.setdefault("before_scrape", (metrics.tracer.collect,))
    if registry is not None:
        # The task metrics are in registry: the endpoint must serve it, not
        # the default registry, or they never reach Prometheus.
        kwargs.setdefault("app", prometheus_client_app(registry))
    if "job" not in kwargs and not os.environ.get("WORKERSD_JOB"):
        kwargs["job"] = app.main

    def on_init(**_):
        global _worker
        # Counters created in the parent (at import, as above) start anew
        # with this process: their created timestamp is its start.
        reset_inherited_metrics(registry)
        _worker = Worker(**kwargs).start()

    def on_shutdown(**_):
        if _worker is not None:
            _worker.stop()

    def on_prerun(task_id=None, task=None, **_):
        metrics.started(task_id, task.name)

    def on_postrun(task_id=None, task=None, state=None, **_):
        metrics.ended(task_id, task.name, (state or "success").lower())

    def on_revoked(request=None, **_):
        if request is not None:
            metrics.ended(request.id, request.task, "revoked")

    # weak=False: the handlers are closures that nothing else keeps alive.
    signals.worker_process_init.connect(on_init, weak=False)
    signals.worker_process_shutdown.connect(on_shutdown, weak=False)
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.task_revoked.connect(on_revoked, weak=False)
    return metrics

