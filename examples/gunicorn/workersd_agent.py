"""Client of the workersd host agent's API, with the Python standard library
alone: JSON over HTTP on a Unix socket (see docs/AGENT.md).
"""

import http.client
import json
import os
import socket
import time

DEFAULT_SOCKET = "/run/workersd/agent.sock"


class AgentError(Exception):
    """The agent answered with an error (status and message) or not at all."""

    def __init__(self, status, message):
        super().__init__("workersd agent: %s %s" % (status, message))
        self.status = status
        self.message = message


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _socket_path(path):
    return path or os.environ.get("WORKERSD_AGENT_SOCKET") or DEFAULT_SOCKET


def call(method, url, body=None, socket_path=None, timeout=5.0):
    """Calls the agent and returns the decoded JSON answer; raises AgentError."""
    conn = _UnixHTTPConnection(_socket_path(socket_path), timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, url, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as e:
        raise AgentError(None, str(e)) from e
    finally:
        conn.close()
    answer = json.loads(data) if data else {}
    if resp.status >= 400:
        raise AgentError(resp.status, answer.get("error", data.decode(errors="replace")))
    return answer


def register(job, port, pid=None, labels=None, scheme=None, metrics_path=None, socket_path=None, retry_for=3.0):
    """Registers the process pid (default: this one) as a target of job that
    serves metrics on port. Returns the agent's view: id, state ("registered",
    or "pending" while etcd is unreachable), key, slot.

    A refused connection (the agent restarting) is retried for retry_for
    seconds; an answer with an error status is not."""
    body = {"job": job, "port": port, "pid": pid or os.getpid()}
    if labels:
        body["labels"] = labels
    if scheme:
        body["scheme"] = scheme
    if metrics_path:
        body["metrics_path"] = metrics_path
    deadline = time.monotonic() + retry_for
    while True:
        try:
            return call("POST", "/v1/workers", body, socket_path)
        except AgentError as e:
            if e.status is not None or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def deregister(pid=None, socket_path=None):
    """Removes the registration of pid (default: this process) at once."""
    return call("DELETE", "/v1/workers/%d" % (pid or os.getpid()), socket_path=socket_path)


# Metric types whose samples carry a created timestamp.
_CREATED_TYPES = ("counter", "histogram", "summary")


def reset_inherited_metrics(registry=None):
    """Gives every counter, histogram and summary created before this
    process was forked its own start: value 0, created timestamp now.

    Call it first thing after fork (gunicorn's post_fork) when metrics are
    created in the parent: gunicorn with preload_app, uWSGI without
    lazy-apps. Prometheus sees a worker's restart through the zero sample it
    writes at a counter's created timestamp; one inherited from the parent
    is older than the previous worker's samples, so Prometheus drops it and
    can miss the restart. Gauges, Info and Enum keep their values.

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
