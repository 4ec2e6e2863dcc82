"""A WSGI application under uWSGI whose workers are each a Prometheus target.

With lazy-apps (uwsgi.ini) every worker imports this module itself after
the fork, so its counters are the worker's own from the start; without,
workersd.uwsgi.setup() restarts them in each worker after the fork.
"""

import os
import sys

try:
    import workersd.uwsgi
except ImportError:  # run from a checkout, the package not installed
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python", "src"))
    import workersd.uwsgi

from prometheus_client import Counter

REQUESTS = Counter("app_requests", "HTTP requests served by this worker process.")
RESPONSES = Counter("app_responses", "HTTP responses by status code.", ["code"])
# The series exist from the start, at 0, as Prometheus' docs advise.
for _code in ("200", "404"):
    RESPONSES.labels(_code)

# Registers this worker with the workersd agent (job: $WORKERSD_JOB), and
# deregisters it after a final scrape when it exits.
workersd.uwsgi.setup()


def application(environ, start_response):
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
