"""workersd for Python: every worker process its own Prometheus target.

A worker serves its own metrics on an ephemeral port and registers it with
the host agent (workersd-agent) over its Unix socket; sdwriter turns the
registrations into Prometheus targets. Standard library only;
prometheus_client is what the endpoint serves unless given another app.

  workersd.Worker          a worker's life as a target (start, stop)
  workersd.Tracer          long units of work accounted at every scrape
  workersd.reset_inherited_metrics
                           metrics created before fork restart with the worker
  workersd.gunicorn, workersd.uwsgi, workersd.celery
                           hooks for those servers
  workersd.agent           the agent's API itself
"""

from .agent import AgentError
from .endpoint import MetricsEndpoint
from .metrics import reset_inherited_metrics
from .tracer import Tracer
from .worker import Worker

__version__ = "0.1.0"
__all__ = ["AgentError", "MetricsEndpoint", "Tracer", "Worker", "reset_inherited_metrics"]
