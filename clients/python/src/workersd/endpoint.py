"""The worker's own /metrics, on an ephemeral port."""

import os
import secrets
import socket
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from socketserver import ThreadingMixIn


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

    def get_environ(self):
        env = super().get_environ()
        env["workersd.socket"] = self.connection  # for the final scrape
        return env


# A final scrape counts only once the scraper has received its whole answer
# in time: handing it to the kernel is not enough, a scraper cut off from
# the worker (a link cut or slowed just then) times out and stores nothing
# (docs/SOAK.md, "a final scrape that never arrived"). While the worker
# exits, a scrape of its path counts once the kernel reports every byte of
# the answer acknowledged by the peer (TIOCOUTQ is 0, the connection still
# established) before the request's start plus the timeout Prometheus sends
# (X-Prometheus-Scrape-Timeout-Seconds) less a margin. Where the kernel does
# not report it (not Linux), a scrape counts once its answer was written.
_DEFAULT_SCRAPE_TIMEOUT = 10.0  # Prometheus' default, for requests naming none
_TCP_ESTABLISHED, _TCP_CLOSE_WAIT = 1, 8


def _scrape_deadline(environ, began):
    try:
        timeout = float(environ.get("HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS", ""))
        if not 0 < timeout < 1e6:
            raise ValueError
    except ValueError:
        timeout = _DEFAULT_SCRAPE_TIMEOUT
    return began + timeout - min(timeout / 10, 0.5)


def _unacked(sock):
    """Bytes written to sock its peer has not acknowledged; -1 once the
    connection is no longer established (a reset empties the queue); None
    when the kernel does not say."""
    try:
        import fcntl
        import struct
        import termios

        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        n = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0)))[0]
    except (ImportError, AttributeError, OSError, ValueError):
        return None
    if state not in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT):
        return -1
    return n


def _delivered(sock, deadline):
    """Whether sock's peer acknowledged everything written by deadline."""
    while True:
        n = _unacked(sock)
        if n is None:
            return True  # no way to know: as before, written is delivered
        if n < 0:
            return False
        if n == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def _buffered(app, environ):
    """Runs a WSGI app to the end: its status, headers and whole body."""
    got, chunks = {}, []

    def start_response(status, headers, exc_info=None):
        got["status"], got["headers"] = status, list(headers)
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return got["status"], got["headers"], b"".join(chunks)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def prometheus_client_app(registry=None):
    """A WSGI app serving prometheus_client's registry (the default one
    unless given), in the format the scraper asks for: Prometheus 3 asks for
    OpenMetrics, which carries each counter's created timestamp."""
    from prometheus_client import REGISTRY
    from prometheus_client.exposition import make_wsgi_app

    return make_wsgi_app(registry if registry is not None else REGISTRY)


def own_metrics_path(pid=None):
    """A metrics path only this process serves: /metrics/<pid>-<16 hex>.

    Workers register it instead of /metrics because their port is
    ephemeral: after a worker exits, Prometheus keeps scraping its address
    for seconds (until discovery catches up), and if another process, a new
    worker of the same job included, has been given the port meanwhile, a
    scrape of /metrics would record that process' counters under the old
    worker's instance and count them twice. The stale scrape of a path of
    its own gets a 404 and records nothing. (Go's registrar.OwnMetricsPath.)"""
    return "/metrics/%d-%s" % (pid or os.getpid(), secrets.token_hex(8))


class MetricsEndpoint:
    """Serves app (a WSGI app; default: prometheus_client's registry) on
    host, port 0, in a daemon thread, at path (default: own_metrics_path())
    and at /metrics for people; anything else is a 404. It counts the
    scrapes of path that begin after the worker began to exit, so that the
    exit can wait for one: everything counted before it then reaches
    Prometheus.

    before_scrape callables run before each scrape is rendered (a Tracer's
    collect, which accounts work still in flight)."""

    def __init__(self, host="0.0.0.0", app=None, before_scrape=(), path=None):
        self._cond = threading.Condition()
        self._exit_began = None
        self._final_scrapes = 0
        self.undelivered_scrapes = 0  # scrapes after exit began not received in time
        self._closed = False
        self.path = path or own_metrics_path()
        metrics = app if app is not None else prometheus_client_app()
        hooks = tuple(before_scrape)

        def serve(environ, start_response):
            began = time.monotonic()
            at = environ.get("PATH_INFO", "")
            if at not in (self.path, "/metrics"):
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found: this worker's metrics are at /metrics\n"]
            for hook in hooks:
                hook()
            if at != self.path:
                return metrics(environ, start_response)
            # The answer of the registered path is buffered and sent with a
            # Content-Length: without one (prometheus_client's app sets none,
            # and wsgiref speaks HTTP/1.0) the scraper completes it only at
            # the connection's close, which wsgiref sends after _served has
            # counted the scrape; over a slow link that close reaches
            # Prometheus after its timeout, and a scrape it stored nothing
            # of would count as the final one.
            status, headers, body = _buffered(metrics, environ)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
            start_response(status, headers)
            body = [body]
            deadline = None
            sock = environ.get("workersd.socket")
            with self._cond:
                exiting = self._exit_began is not None and began >= self._exit_began
            if exiting and sock is not None and _unacked(sock) is not None:
                deadline = _scrape_deadline(environ, began)
                # A scraper that reads nothing must not hold the write past it.
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
            return _Counted(body, self, began, sock, deadline)

        class Server(_ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self._server = make_server(host, 0, serve, Server, handler_class=_Quiet)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="workersd-metrics", daemon=True)
        self._thread.start()

    def _served(self, began, sent, sock, deadline):
        with self._cond:
            if self._exit_began is None or began < self._exit_began:
                return
        if not sent or (deadline is not None and not _delivered(sock, deadline)):
            with self._cond:
                self.undelivered_scrapes += 1
                self._cond.notify_all()
            return
        with self._cond:
            self._final_scrapes += 1
            self._cond.notify_all()

    def wait_final_scrape(self, timeout):
        """Waits up to timeout seconds for a scrape that begins from now on
        and whose whole answer the scraper received in time (see above);
        returns whether one was."""
        with self._cond:
            if self._exit_began is None:
                self._exit_began = time.monotonic()
            return self._cond.wait_for(lambda: self._final_scrapes > 0, timeout)

    def close(self):
        """Stops serving and frees the port; closing again does nothing."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()
        self._server.server_close()


class _Counted:
    """The response body; wsgiref calls close() once it has been sent, or
    once sending it failed (then the iteration did not end)."""

    def __init__(self, body, endpoint, began, sock, deadline):
        self._body, self._endpoint, self._began = body, endpoint, began
        self._sock, self._deadline = sock, deadline
        self._sent = False

    def __iter__(self):
        yield from self._body
        self._sent = True  # asked for more after the last piece was written

    def close(self):
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
        self._endpoint._served(self._began, self._sent, self._sock, self._deadline)
