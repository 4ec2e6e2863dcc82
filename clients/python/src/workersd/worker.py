"""One worker process's life as a target: endpoint, registration, exit."""

import logging
import os
import threading

from . import agent
from .endpoint import MetricsEndpoint

log = logging.getLogger("workersd")


def labels_from_env(value=None):
    """Parses "name=value,name2=value2" ($WORKERSD_LABELS by default) into
    a dict (docs/CLIENTS.md): white space around names and values is
    stripped, empty items are skipped; an item without "=" or a name, or a
    name given twice, is a ValueError naming it, since dropping it would
    register the worker without a label its user asked for."""
    if value is None:
        value = os.environ.get("WORKERSD_LABELS", "")
    out = {}
    for item in value.split(","):
        if not item.strip():
            continue
        name, eq, val = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValueError("workersd: WORKERSD_LABELS: %r is not name=value" % item.strip())
        if name in out:
            raise ValueError("workersd: WORKERSD_LABELS: label %r is given twice" % name)
        out[name] = val.strip()
    return out


def _env_seconds(name, default):
    """$name as a number of seconds >= 0, default when unset or empty; any
    other value is a ValueError naming the variable (docs/CLIENTS.md)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError("workersd: %s: %r is not a number of seconds >= 0" % (name, raw))
    return value


class Worker:
    """A worker process as a Prometheus target.

    start() serves the metrics endpoint on an ephemeral port and registers
    it with the host agent in a background thread, so it never delays the
    worker: while the agent is away (not started yet, restarting) it tries
    again with a backoff from 0.1 s doubling up to backoff_max, until it is
    registered or stop() is called. An error that is the request's fault (a
    4xx other than 503) is logged and not retried.

    stop() is for a graceful exit: if the worker was registered, it waits,
    at most final_scrape_timeout seconds, for one more scrape that begins
    after the call, so everything the worker counted reaches Prometheus,
    then deregisters. A worker that never registered does not wait: no
    scrape can come. Either way stop() closes the endpoint last, which frees
    its port. If the process dies without stop(), the agent sees the exit
    and removes the registration.

    Every argument is optional:
      job: the Prometheus job; defaults to $WORKERSD_JOB (required one way
        or the other).
      labels: extra target labels; defaults to $WORKERSD_LABELS "k=v,k2=v2".
      host: the address the endpoint binds; defaults to
        $WORKERSD_METRICS_HOST, else 0.0.0.0 (the agent registers this
        host's address with the port).
      app: the WSGI app the endpoint serves; defaults to prometheus_client's
        default registry.
      before_scrape: callables run before each scrape (Tracer.collect).
      final_scrape_timeout: seconds; defaults to
        $WORKERSD_FINAL_SCRAPE_TIMEOUT, else 15 (above Prometheus' 5 s
        discovery delay plus a scrape interval).
      backoff_max: the longest wait between attempts, seconds; defaults to 1.
      socket_path: the agent's socket; defaults to $WORKERSD_AGENT_SOCKET,
        else /run/workersd/agent.sock.
      logger: defaults to the "workersd" logger.
    """

    def __init__(
        self,
        job=None,
        labels=None,
        host=None,
        app=None,
        before_scrape=(),
        final_scrape_timeout=None,
        backoff_max=1.0,
        socket_path=None,
        logger=None,
    ):
        self.job = job or os.environ.get("WORKERSD_JOB")
        if not self.job:
            raise ValueError("workersd: no job: pass job= or set WORKERSD_JOB")
        self.labels = labels if labels is not None else labels_from_env()
        self.host = host or os.environ.get("WORKERSD_METRICS_HOST") or "0.0.0.0"
        if final_scrape_timeout is None:
            final_scrape_timeout = _env_seconds("WORKERSD_FINAL_SCRAPE_TIMEOUT", 15.0)
        self.final_scrape_timeout = final_scrape_timeout
        self.backoff_max = backoff_max
        self.socket_path = socket_path
        self.log = logger or log
        self._app = app
        self._before_scrape = tuple(before_scrape)
        self._stop = threading.Event()
        self._registered = threading.Event()
        self._thread = None
        self.endpoint = None
        self.registration = None
        self.pid = None

    @property
    def registered(self):
        """Whether the agent has accepted the registration."""
        return self._registered.is_set()

    def wait_registered(self, timeout=None):
        """Waits for the registration; returns whether it happened."""
        return self._registered.wait(timeout)

    def start(self):
        """Starts the endpoint and the registration; returns at once."""
        self.pid = os.getpid()
        self.endpoint = MetricsEndpoint(self.host, self._app, self._before_scrape)
        self._thread = threading.Thread(target=self._register, name="workersd-register", daemon=True)
        self._thread.start()
        return self

    def _register(self):
        delay = 0.1
        away = False
        while not self._stop.is_set():
            try:
                reg = agent.register(
                    self.job, self.endpoint.port, pid=self.pid, labels=self.labels,
                    metrics_path=self.endpoint.path, path=self.socket_path,
                )
            except agent.AgentError as e:
                if not e.retryable:
                    self.log.error("workersd: registration of pid %d refused, not retrying: %s", self.pid, e)
                    return
                if not away:
                    self.log.warning("workersd: agent unreachable, registering pid %d when it is back: %s", self.pid, e)
                    away = True
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            self.registration = reg
            self._registered.set()
            self.log.info(
                "workersd: registered pid %d port %d: %s slot %s %s",
                self.pid, self.endpoint.port, reg.get("state"), reg.get("slot"), reg.get("key", ""),
            )
            return

    def stop(self):
        """The graceful exit: final scrape (if registered), deregistration,
        then the endpoint closes and frees its port."""
        self._stop.set()
        try:
            self._stop_registered()
        finally:
            if self.endpoint is not None:
                self.endpoint.close()

    def _stop_registered(self):
        if self._thread is not None:
            # An attempt in flight ends within the call's timeout; its
            # outcome decides whether there is anything to wait for.
            self._thread.join(6)
        if not self._registered.is_set():
            return
        if not self.endpoint.wait_final_scrape(self.final_scrape_timeout):
            self.log.warning(
                "workersd: no final scrape of pid %d within %.0fs; the last counts may be lost",
                self.pid, self.final_scrape_timeout,
            )
        try:
            agent.deregister(self.pid, path=self.socket_path)
        except agent.AgentError as e:
            # The agent removes the registration when this process exits anyway.
            self.log.warning("workersd: deregistration of pid %d failed: %s", self.pid, e)
        self._registered.clear()
