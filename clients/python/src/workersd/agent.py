"""The host agent's API (docs/AGENT.md): JSON over HTTP on a Unix socket,
with the standard library alone."""

import http.client
import json
import os
import socket
import warnings

DEFAULT_SOCKET = "/run/workersd/agent.sock"


class AgentError(Exception):
    """The agent answered with an error, or not at all (docs/CLIENTS.md).

    status is the HTTP status, None when the agent could not be reached;
    error is the agent's own text (its answer's "error"), or why it could
    not be reached (naming the socket); field names the request field at
    fault, None when the agent names none."""

    def __init__(self, status, error, field=None):
        super().__init__("workersd agent: %s %s" % (status if status is not None else "unreachable", error))
        self.status = status
        self.error = error
        self.field = field or None

    @property
    def retryable(self):
        """Whether the same request may succeed later: the agent is away
        (not listening, restarting: no answer, or 503 while it starts or
        stops). Any other error is the request's fault."""
        return self.status is None or self.status == 503

    @property
    def message(self):
        """Deprecated: the name of error before docs/CLIENTS.md."""
        warnings.warn("AgentError.message is deprecated: use AgentError.error", DeprecationWarning, stacklevel=2)
        return self.error


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def socket_path(path=None):
    """The agent's socket: path, else $WORKERSD_AGENT_SOCKET, else the
    default /run/workersd/agent.sock."""
    return path or os.environ.get("WORKERSD_AGENT_SOCKET") or DEFAULT_SOCKET


def call(method, url, body=None, path=None, timeout=5.0):
    """Calls the agent and returns its decoded JSON answer; raises AgentError."""
    conn = _UnixHTTPConnection(socket_path(path), timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, url, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as e:
        # No answer, or one that is not HTTP: the agent is away (retryable).
        raise AgentError(None, "%s: %s" % (socket_path(path), e)) from e
    finally:
        conn.close()
    try:
        answer = json.loads(data) if data else {}
    except ValueError:
        answer = {"error": data.decode(errors="replace")}
    if resp.status >= 400:
        raise AgentError(resp.status, answer.get("error", ""), answer.get("field"))
    return answer


def register(job, port, pid=None, labels=None, scheme=None, metrics_path=None, path=None):
    """Registers process pid (default: this one) as a target of job serving
    metrics on port. Returns the agent's view of it: id, state
    ("registered", or "pending" while etcd is unreachable), key, slot.
    One attempt: Worker retries while the agent is away."""
    body = {"job": job, "port": port, "pid": pid or os.getpid()}
    if labels:
        body["labels"] = labels
    if scheme:
        body["scheme"] = scheme
    if metrics_path:
        body["metrics_path"] = metrics_path
    return call("POST", "/v1/workers", body, path)


def deregister(pid=None, path=None):
    """Removes the registration of pid (default: this process) at once."""
    return call("DELETE", "/v1/workers/%d" % (pid or os.getpid()), path=path)


def workers(path=None):
    """The agent's registrations (GET /v1/workers)."""
    return call("GET", "/v1/workers", path=path).get("workers", [])
