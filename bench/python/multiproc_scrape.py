"""Scrape cost of prometheus_client's multiprocess mode as worker lifetimes add up.

Each worker lifetime is a forked process (as gunicorn forks its workers) that
increments the same metrics -- a counter with 60 labelled series and a
histogram with 20 -- and exits; the parent then calls mark_process_dead, as a
gunicorn child_exit hook does. Every lifetime leaves its .db files in
PROMETHEUS_MULTIPROC_DIR. After 8, 64, 256 and 1,024 lifetimes (or the
checkpoints given), a scrape is timed the way the documented multiprocess
exporter serves one: a new CollectorRegistry with a MultiProcessCollector,
then generate_latest. The scrape is timed in-process, without HTTP, so it is
a lower bound of what Prometheus waits for.

Usage: multiproc_scrape.py DIR SCRAPES CHECKPOINT...
Prints one JSON object per checkpoint on stdout.
"""

import json
import os
import sys
import time


def main():
    directory = sys.argv[1]
    scrapes = int(sys.argv[2])
    checkpoints = sorted(int(c) for c in sys.argv[3:])
    # The library picks its storage when it is imported: set the directory first.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    os.environ["prometheus_multiproc_dir"] = directory
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

    requests = Counter("app_requests_total", "Requests.", ["route", "code"])
    duration = Histogram("app_request_duration_seconds", "Request duration.", ["route"])
    routes = ["/route/%d" % i for i in range(20)]
    codes = ["200", "404", "500"]

    def lifetime(n):
        # The same 60 counter series and 20 histogram series in every worker.
        for r in routes:
            for c in codes:
                requests.labels(r, c).inc(n % 7 + 1)
            duration.labels(r).observe(0.001 * (n % 50 + 1))

    lived = 0
    for checkpoint in checkpoints:
        while lived < checkpoint:
            pid = os.fork()
            if pid == 0:
                try:
                    lifetime(lived)
                finally:
                    os._exit(0)
            _, status = os.waitpid(pid, 0)
            if status != 0:
                raise SystemExit("worker lifetime %d exited with status %d" % (lived, status))
            multiprocess.mark_process_dead(pid, directory)
            lived += 1
        files = len([f for f in os.listdir(directory) if f.endswith(".db")])
        times = []
        size = 0
        for _ in range(scrapes):
            t0 = time.perf_counter()
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, directory)
            out = generate_latest(registry)
            times.append(time.perf_counter() - t0)
            size = len(out)
        times.sort()
        print(json.dumps({
            "lifetimes": lived,
            "files": files,
            "bytes": size,
            "scrape_seconds": times,
        }), flush=True)


if __name__ == "__main__":
    main()
