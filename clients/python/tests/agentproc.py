"""A real workersd-agent for the tests: $WORKERSD_AGENT_BIN against
$WORKERSD_ETCD_ENDPOINTS (clients/python/python_test.go builds and starts
both). Without them the tests that need it skip, and fail when CI=true."""

import os
import shutil
import subprocess
import tempfile
import time
import unittest


def require():
    binary = os.environ.get("WORKERSD_AGENT_BIN")
    endpoints = os.environ.get("WORKERSD_ETCD_ENDPOINTS")
    if binary and endpoints:
        return binary, endpoints
    msg = "needs WORKERSD_AGENT_BIN and WORKERSD_ETCD_ENDPOINTS (go test ./clients/python sets them)"
    if os.environ.get("CI") == "true":
        raise AssertionError(msg)
    raise unittest.SkipTest(msg)


class Agent:
    """An agent process with its own socket and state file."""

    def __init__(self, dir=None):
        self.binary, self.endpoints = require()
        self.dir = dir or tempfile.mkdtemp(prefix="workersd-agent-")
        self._own_dir = dir is None
        self.socket = os.path.join(self.dir, "agent.sock")
        self.proc = None

    def start(self, timeout=10):
        self.log = open(os.path.join(self.dir, "agent.log"), "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--etcd.endpoints=" + self.endpoints, "--host=test-host", "--ttl=5s", "--slot-hold=0s",
             "--listen.socket=" + self.socket, "--state.file=" + os.path.join(self.dir, "agent.json")],
            stdout=self.log, stderr=self.log,
        )
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("agent did not start: %s" % self.output())
            time.sleep(0.02)
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
            self.log.close()

    def output(self):
        with open(os.path.join(self.dir, "agent.log"), "rb") as f:
            return f.read().decode(errors="replace")

    def close(self):
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def until(cond, timeout, what):
    """Polls cond every 20 ms until it is true; fails after timeout."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("after %.1fs: %s" % (timeout, what))
        time.sleep(0.02)
