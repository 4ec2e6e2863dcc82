"""uWSGI: in the application module (the one uWSGI imports),

    import workersd.uwsgi
    workersd.uwsgi.setup()

With lazy-apps (each worker imports the app after the fork) the worker
registers at once; without, setup() runs in the master and registers each
worker after its fork (uwsgi.post_fork_hook). Either way the worker waits
for a final scrape and deregisters in uwsgi.atexit, as it exits
(max-requests, reload, shutdown).

uWSGI must run Python threads (enable-threads = true: the endpoint and the
registration are threads) and, for recycling, with a master (master =
true); give workers time for the final scrape (worker-reload-mercy above
$WORKERSD_FINAL_SCRAPE_TIMEOUT). examples/uwsgi has a complete
configuration.
"""

import uwsgi

from .metrics import reset_inherited_metrics
from .worker import Worker

_worker = None


def setup(**kwargs):
    """Makes each worker a target; kwargs are Worker's (job, labels, ...)."""
    if uwsgi.worker_id() > 0:
        _start(kwargs)
        return
    previous = getattr(uwsgi, "post_fork_hook", None)

    def hook():
        if previous is not None:
            previous()
        if uwsgi.worker_id() > 0:
            # Metrics the master created are the worker's from now on.
            reset_inherited_metrics()
            _start(kwargs)

    uwsgi.post_fork_hook = hook


def _start(kwargs):
    global _worker
    _worker = Worker(**kwargs).start()
    previous = getattr(uwsgi, "atexit", None)

    def atexit():
        _worker.stop()
        if previous is not None:
            previous()

    uwsgi.atexit = atexit
