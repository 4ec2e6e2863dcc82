"""gunicorn configuration: every worker is its own Prometheus target.

The workersd Python package (clients/python: pip install ./clients/python)
does the work in two hooks: post_fork (in the new worker) starts a metrics
endpoint on an ephemeral port and registers it with the workersd agent, in
the background, retrying while the agent is away; worker_exit (in the
worker, as it ends) waits, bounded, for one more scrape so that nothing
counted before the exit is lost, then deregisters. If the worker dies
without worker_exit (kill -9, OOM), the agent notices the exit and removes
it.

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

import os
import sys

try:
    import workersd.gunicorn
except ImportError:  # run from a checkout, the package not installed
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python", "src"))
    import workersd.gunicorn

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 5
preload_app = os.environ.get("GUNICORN_PRELOAD", "0") == "1"

os.environ.setdefault("WORKERSD_JOB", "gunicorn-demo")
MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

if MULTIPROC:
    # For comparison only: multiprocess mode's bookkeeping of dead workers.
    def child_exit(server, worker):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

else:
    from workersd.gunicorn import post_fork, worker_exit  # noqa: F401
