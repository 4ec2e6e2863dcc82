import logging
import os
import socket
import threading
import time
import unittest
import urllib.error
import urllib.request

import workersd.endpoint
import workersd.worker
from workersd import Worker, agent

from agentproc import Agent, until


def app(environ, start_response):
    body = b"# TYPE test_requests counter\ntest_requests_total 7\n"
    start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4"), ("Content-Length", str(len(body)))])
    return [body]


def scrape(worker, path=None):
    """Scrapes as Prometheus does: the registered path."""
    url = "http://127.0.0.1:%d%s" % (worker.endpoint.port, path or worker.endpoint.path)
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def refused(port):
    """Whether nothing listens on 127.0.0.1:port any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


class WorkerTest(unittest.TestCase):
    def setUp(self):
        self.agent = Agent()
        self.addCleanup(self.agent.close)

    def worker(self, **kw):
        kw.setdefault("job", "py-unit")
        kw.setdefault("host", "127.0.0.1")
        kw.setdefault("app", app)
        kw.setdefault("socket_path", self.agent.socket)
        w = Worker(**kw)
        self.addCleanup(lambda: w.endpoint and w.endpoint.close())
        return w

    def test_registers_and_serves(self):
        self.agent.start()
        w = self.worker(labels={"pool": "a"}).start()
        self.assertTrue(w.wait_registered(5), "not registered")
        self.assertEqual(w.registration["labels"], {"pool": "a"})
        self.assertTrue(w.registration["address"].endswith(":%d" % w.endpoint.port))
        self.assertIn("test_requests_total 7", scrape(w))
        threading.Timer(0.3, scrape, [w]).start()
        w.stop()
        self.assertEqual(agent.workers(path=self.agent.socket), [])

    def test_start_does_not_wait_for_the_agent(self):
        with self.assertLogs("workersd", logging.WARNING) as logs:
            began = time.monotonic()
            w = self.worker().start()
            self.assertLess(time.monotonic() - began, 0.5, "start() waited for the absent agent")
            self.assertFalse(w.registered)
            # An attempt failed, and the worker keeps trying.
            until(lambda: any("agent unreachable" in m for m in logs.output), 5, "no failed attempt logged")
        back = time.monotonic()
        self.agent.start()
        self.assertTrue(w.wait_registered(5), "not registered after the agent came back")
        # The backoff is bounded at 1 s: registered within it of the return.
        self.assertLess(time.monotonic() - back, 1.5)
        w.backoff_max = 0
        threading.Timer(0.2, scrape, [w]).start()
        w.stop()

    def test_stop_without_registration_returns_at_once(self):
        w = self.worker(final_scrape_timeout=30).start()
        began = time.monotonic()
        w.stop()
        self.assertLess(time.monotonic() - began, 1, "stop() waited for a scrape that cannot come")

    def test_stop_closes_the_endpoint(self):
        # As Ruby's and Node's: once deregistered, nothing serves the port.
        self.agent.start()
        w = self.worker().start()
        self.assertTrue(w.wait_registered(5), "not registered")
        port = w.endpoint.port
        self.assertIn("test_requests_total 7", scrape(w))
        threading.Timer(0.2, scrape, [w]).start()
        w.stop()
        self.assertEqual(agent.workers(path=self.agent.socket), [])
        self.assertTrue(refused(port), "stop() left the endpoint serving port %d" % port)

    def test_stop_without_registration_closes_the_endpoint(self):
        w = self.worker().start()
        port = w.endpoint.port
        self.assertFalse(refused(port))
        w.stop()
        self.assertTrue(refused(port), "stop() left the endpoint serving port %d" % port)

    def test_refused_registration_is_not_retried(self):
        self.agent.start()
        with self.assertLogs("workersd", logging.ERROR) as logs:
            w = self.worker(job="bad job").start()
            w._thread.join(5)
        self.assertFalse(w._thread.is_alive())
        self.assertFalse(w.registered)
        self.assertIn("refused", logs.output[0])

    def test_final_scrape_must_begin_after_stop(self):
        self.agent.start()
        w = self.worker(final_scrape_timeout=0.3).start()
        self.assertTrue(w.wait_registered(5))
        scrape(w)  # before the exit began: does not count
        began = time.monotonic()
        self.assertFalse(w.endpoint.wait_final_scrape(0.3))
        self.assertGreaterEqual(time.monotonic() - began, 0.29)
        threading.Timer(0.1, scrape, [w]).start()
        self.assertTrue(w.endpoint.wait_final_scrape(5))

    def test_own_metrics_path(self):
        # A stale scrape of another worker's path (Prometheus still scraping
        # a gone worker whose port this one was given) gets a 404; /metrics
        # answers people but is not the final scrape.
        self.agent.start()
        w = self.worker(final_scrape_timeout=0.3).start()
        self.assertTrue(w.wait_registered(5))
        self.assertRegex(w.endpoint.path, r"^/metrics/%d-[0-9a-f]{16}$" % os.getpid())
        self.assertEqual(w.registration["metrics_path"], w.endpoint.path)
        self.assertIn("test_requests_total", scrape(w, "/metrics"))
        with self.assertRaises(urllib.error.HTTPError) as cm:
            scrape(w, workersd.endpoint.own_metrics_path())
        self.assertEqual(cm.exception.code, 404)
        threading.Timer(0.05, scrape, [w, "/metrics"]).start()
        self.assertFalse(w.endpoint.wait_final_scrape(0.3), "a scrape of /metrics counted as the final scrape")

    def test_job_is_required(self):
        env = os.environ.pop("WORKERSD_JOB", None)
        self.addCleanup(lambda: env is not None and os.environ.__setitem__("WORKERSD_JOB", env))
        with self.assertRaisesRegex(ValueError, "WORKERSD_JOB"):
            Worker(socket_path=self.agent.socket)


class LabelsFromEnvTest(unittest.TestCase):
    """docs/CLIENTS.md: $WORKERSD_LABELS is "name=value,..."; an item that
    is not name=value, or a name given twice, is an error, never dropped."""

    def test_parses(self):
        labels_from_env = workersd.worker.labels_from_env
        self.assertEqual(labels_from_env(" team=core, tier = web ,"), {"team": "core", "tier": "web"})
        self.assertEqual(labels_from_env(""), {})
        self.assertEqual(labels_from_env("q=a=b"), {"q": "a=b"})
        with self.assertRaisesRegex(ValueError, "WORKERSD_LABELS: 'oops' is not name=value"):
            labels_from_env("team=core,oops")
        with self.assertRaisesRegex(ValueError, "not name=value"):
            labels_from_env("=x")
        with self.assertRaisesRegex(ValueError, "given twice"):
            labels_from_env("a=1,a=2")


if __name__ == "__main__":
    unittest.main()
