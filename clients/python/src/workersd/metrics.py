"""Metrics that belong to the worker, not to the process it was forked from."""

# Metric types whose samples carry a created timestamp.
_CREATED_TYPES = ("counter", "histogram", "summary")


def reset_inherited_metrics(registry=None):
    """Gives every counter, histogram and summary created before this
    process was forked its own start: value 0, created timestamp now.

    Call it first thing after fork when metrics are created in the parent:
    gunicorn with preload_app, uWSGI without lazy-apps, Celery's prefork
    pool (the hooks of this package do). Prometheus sees a worker's restart
    through the zero sample it writes at a counter's created timestamp; one
    inherited from the parent is older than the previous worker's samples,
    so Prometheus drops it and can miss the restart. Gauges, Info and Enum
    keep their values.

    Uses prometheus_client's private _collector_to_names, _metrics and
    _metric_init (0.16 to 0.21 at least): the library has no public way to
    restart a metric."""
    if registry is None:
        from prometheus_client import REGISTRY as registry
    for collector in list(getattr(registry, "_collector_to_names", {})):
        if getattr(collector, "_type", None) not in _CREATED_TYPES or not hasattr(collector, "_metric_init"):
            continue
        if collector._labelnames:
            with collector._lock:
                children = list(collector._metrics.values())
            for child in children:
                child._metric_init()
        else:
            collector._metric_init()
