"""gunicorn server hooks: in gunicorn.conf.py,

    from workersd.gunicorn import post_fork, worker_exit

and every worker is its own target, registered as it forks and
deregistered after a final scrape as it exits (max_requests, reload,
shutdown). The job is $WORKERSD_JOB; the rest of the settings are
Worker's (workersd.Worker). To change them, call configure() in the
config file first.
"""

from .metrics import reset_inherited_metrics
from .worker import Worker

_settings = {}
_worker = None


def configure(**kwargs):
    """Sets Worker's arguments (job, labels, host, app, before_scrape, ...)
    for the workers forked from now on."""
    _settings.update(kwargs)


def post_fork(server, worker):
    global _worker
    # Before anything counts: metrics inherited from the master
    # (preload_app) start anew, with this worker's created timestamp.
    reset_inherited_metrics()
    _worker = Worker(logger=server.log, **_settings).start()


def worker_exit(server, worker):
    if _worker is not None:
        _worker.stop()
