"""gunicorn configuration: every worker is its own Prometheus target.

post_fork (in the new worker) starts a metrics endpoint on an ephemeral
port and registers it with the workersd agent; worker_exit (in the worker,
as it ends) waits, bounded, for one more scrape so that nothing counted
before the exit is lost, then deregisters. If the worker dies without
worker_exit (kill -9, OOM), the agent notices the exit and removes it.

Settings come from the environment so the file works unchanged in the
example and in its test:

  GUNICORN_BIND                  127.0.0.1:8000
  GUNICORN_WORKERS               4
  GUNICORN_MAX_REQUESTS          0 (never recycle)
  GUNICORN_PRELOAD               0 (1: preload_app, the app imported in the master)
  PROMETHEUS_MULTIPROC_DIR       set: Python's multiprocess mode instead of
                                 workersd, for comparison (app.py serves
                                 /metrics; no registration)
  WORKERSD_JOB                   gunicorn-demo
  WORKERSD_LABELS                extra target labels, "k=v,k2=v2"
  WORKERSD_METRICS_HOST          address the metrics endpoint binds, 0.0.0.0
  WORKERSD_AGENT_SOCKET          /run/workersd/agent.sock
  WORKERSD_FINAL_SCRAPE_TIMEOUT  seconds, 15 (above Prometheus' 5 s
                                 discovery delay plus a scrape interval)
"""

import logging
import os
import socket
import sys
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workersd_agent  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app  # noqa: E402

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 5
preload_app = os.environ.get("GUNICORN_PRELOAD", "0") == "1"

JOB = os.environ.get("WORKERSD_JOB", "gunicorn-demo")
METRICS_HOST = os.environ.get("WORKERSD_METRICS_HOST", "0.0.0.0")
FINAL_SCRAPE_TIMEOUT = float(os.environ.get("WORKERSD_FINAL_SCRAPE_TIMEOUT", "15"))
LABELS = dict(kv.split("=", 1) for kv in os.environ.get("WORKERSD_LABELS", "").split(",") if "=" in kv)

log = logging.getLogger("gunicorn.error")


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class MetricsEndpoint:
    """The worker's /metrics, counting the scrapes that began after the
    worker started to exit. Built by hand rather than with
    start_http_server(0): prometheus_client before 0.17 returns nothing from
    it, so the port it bound could not be known."""

    def __init__(self, host):
        self._cond = threading.Condition()
        self._exit_began = None
        self._final_scrapes = 0
        metrics = make_wsgi_app(REGISTRY)

        def app(environ, start_response):
            began = time.monotonic()
            return _Counted(metrics(environ, start_response), self, began)

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = make_server(host, 0, app, Server, handler_class=_Quiet)
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def _served(self, began):
        with self._cond:
            if self._exit_began is not None and began >= self._exit_began:
                self._final_scrapes += 1
                self._cond.notify_all()

    def wait_final_scrape(self, timeout):
        """Waits for a scrape that begins from now on and is fully sent."""
        with self._cond:
            self._exit_began = time.monotonic()
            return self._cond.wait_for(lambda: self._final_scrapes > 0, timeout)


class _Counted:
    """The response body; wsgiref calls close() once it has been sent."""

    def __init__(self, body, endpoint, began):
        self._body, self._endpoint, self._began = body, endpoint, began

    def __iter__(self):
        return iter(self._body)

    def close(self):
        self._endpoint._served(self._began)


_endpoint = None
_registered = False


MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def child_exit(server, worker):
    if MULTIPROC:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_fork(server, worker):
    global _endpoint, _registered
    if MULTIPROC:
        return
    # Before anything counts: metrics inherited from the master (preload_app)
    # start anew, with this worker's created timestamp.
    workersd_agent.reset_inherited_metrics()
    _endpoint = MetricsEndpoint(METRICS_HOST)
    try:
        reg = workersd_agent.register(JOB, _endpoint.port, labels=LABELS)
        _registered = True
        log.info("workersd: registered pid %d port %d: %s %s", os.getpid(), _endpoint.port, reg.get("state"), reg.get("key", ""))
    except workersd_agent.AgentError as e:
        # The worker serves anyway; it is just not scraped.
        log.warning("workersd: registration failed: %s", e)


def worker_exit(server, worker):
    if _endpoint is None or not _registered:
        return
    if not _endpoint.wait_final_scrape(FINAL_SCRAPE_TIMEOUT):
        log.warning("workersd: no final scrape within %.0fs; the last counts may be lost", FINAL_SCRAPE_TIMEOUT)
    try:
        workersd_agent.deregister()
    except workersd_agent.AgentError as e:
        # The agent removes the registration when this process exits anyway.
        log.warning("workersd: deregistration failed: %s", e)
