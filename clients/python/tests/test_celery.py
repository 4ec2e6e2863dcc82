import os
import threading
import unittest
import urllib.request

from workersd import agent

from agentproc import Agent, until

try:
    import celery
    from celery import signals
except ImportError:  # scripts/test installs python3-celery
    celery = None


def require_celery():
    if celery is not None:
        return
    msg = "needs celery (apt-get install python3-celery)"
    if os.environ.get("CI") == "true":
        raise AssertionError(msg)
    raise unittest.SkipTest(msg)


def scrape(worker):
    url = "http://127.0.0.1:%d%s" % (worker.endpoint.port, worker.endpoint.path)
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


class CelerySetupTest(unittest.TestCase):
    """workersd.celery.setup driven by Celery's own signals, sent as a
    prefork pool process sends them: init after the fork, a task's prerun
    and postrun, shutdown."""

    def setUp(self):
        require_celery()
        self.agent = Agent().start()
        self.addCleanup(self.agent.close)

    def test_registry_is_what_the_endpoint_serves(self):
        from prometheus_client import CollectorRegistry

        import workersd.celery

        registry = CollectorRegistry()
        app = celery.Celery("py-celery-unit")

        @app.task(name="unit.add")
        def add(x, y):
            return x + y

        metrics = workersd.celery.setup(
            app, registry=registry, host="127.0.0.1", socket_path=self.agent.socket, final_scrape_timeout=5,
        )
        self.assertIsNotNone(metrics)
        signals.worker_process_init.send(sender=None)
        w = workersd.celery._worker
        self.addCleanup(lambda: w.endpoint.close())
        self.assertTrue(w.wait_registered(5), "not registered")
        self.assertEqual(w.registration["job"], "py-celery-unit")

        signals.task_prerun.send(sender=add, task_id="t1", task=add, args=(1, 2), kwargs={})
        signals.task_postrun.send(sender=add, task_id="t1", task=add, args=(1, 2), kwargs={}, retval=3, state="SUCCESS")
        # What Prometheus scrapes holds the task metrics of registry.
        body = scrape(w)
        self.assertIn('celery_tasks_total{outcome="success",task="unit.add"} 1.0', body)
        self.assertIn("celery_tasks_in_flight 0.0", body)
        self.assertIn('celery_task_seconds_total{task="unit.add"}', body)

        threading.Timer(0.2, scrape, [w]).start()
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
        until(lambda: agent.workers(path=self.agent.socket) == [], 5, "still registered after shutdown")


if __name__ == "__main__":
    unittest.main()
