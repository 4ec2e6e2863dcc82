"""A small WSGI application whose workers are each a Prometheus target.

Metrics live in the worker process's own, plain registry: no
prometheus_client multiprocess mode, no shared files. Prometheus sums over
the workers (sum without (instance, worker, host) (rate(app_requests_total[5m]))).

With gunicorn's preload_app this module is imported once, in the master, and
its metrics are inherited by every worker: gunicorn.conf.py's post_fork
gives them the worker's own start (workersd.reset_inherited_metrics).
"""

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest, multiprocess

# For comparison only (the project's tests measure it beside workersd):
# Python's multiprocess mode, where every worker writes its values to files
# in PROMETHEUS_MULTIPROC_DIR and any worker serves the sum of all the
# files, of live and dead workers alike, on the application's own port.
MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter("app_requests", "HTTP requests served by this worker process.")
RESPONSES = Counter("app_responses", "HTTP responses by status code.", ["code"])
# The series exist from the start, at 0, as Prometheus' docs advise.
for _code in ("200", "404"):
    RESPONSES.labels(_code)


def app(environ, start_response):
    if MULTIPROC and environ.get("PATH_INFO") == "/metrics":
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]
    REQUESTS.inc()
    if environ.get("PATH_INFO", "/") == "/":
        code, status = "200", "200 OK"
        body = b"hello from worker %d\n" % os.getpid()
    else:
        code, status = "404", "404 Not Found"
        body = b"not found\n"
    RESPONSES.labels(code).inc()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
