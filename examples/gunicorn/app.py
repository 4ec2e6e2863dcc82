"""A small WSGI application whose workers are each a Prometheus target.

Metrics live in the worker process's own, plain registry: no
prometheus_client multiprocess mode, no shared files. Prometheus sums over
the workers (sum without (instance, worker, host) (rate(app_requests_total[5m]))).
"""

import os

from prometheus_client import Counter

REQUESTS = Counter("app_requests", "HTTP requests served by this worker process.")


def app(environ, start_response):
    REQUESTS.inc()
    body = b"hello from worker %d\n" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
