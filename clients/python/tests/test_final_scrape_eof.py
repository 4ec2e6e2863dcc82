"""Reproduction (soak seed 2026, 30 min: app_requests_total OFF BY -4): the
final scrape of a gunicorn worker counted as delivered while Prometheus
timed out on it.

The endpoint serves prometheus_client's own WSGI app, which sets no
Content-Length, over wsgiref's HTTP/1.0 server: the answer ends only when
the connection closes. The endpoint counts the scrape as final once every
byte is acknowledged, and only then does wsgiref close the connection. So
the scraper (Prometheus reads to EOF when no Content-Length is given) gets
the end of the answer one more trip after the worker has counted it. On a
slowed link (tbf, soak-b at +764 s and +94 s) that trip took Prometheus
past its 1 s timeout: up 0, nothing stored, and the worker deregistered
with the requests it had answered since its last stored scrape unseen.

Here the close is held back 1.5 s (standing in for the FIN's slow way to
the scraper); a Prometheus-like scraper with a 1 s timeout reads to the
Content-Length if there is one, else to EOF. The endpoint must not count a
scrape the scraper could not complete in time.
"""

import socket
import sys
import threading
import time
import unittest

from workersd.endpoint import MetricsEndpoint

from agentproc import until

TIMEOUT = 1.0


def scrape(port, path):
    """Prometheus-like: the timeout runs from before the connection; the
    answer is complete at its Content-Length or, without one, at EOF."""
    start = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\n"
                  b"X-Prometheus-Scrape-Timeout-Seconds: %g\r\n\r\n" % (path.encode(), TIMEOUT))
        data = b""
        while True:
            left = start + TIMEOUT - time.monotonic()
            if left <= 0:
                return False, data
            s.settimeout(left)
            try:
                b = s.recv(65536)
            except socket.timeout:
                return False, data
            if not b:
                return True, data  # EOF
            data += b
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length" and len(body) >= int(v):
                        return True, data
    finally:
        s.close()


@unittest.skipUnless(sys.platform.startswith("linux"), "the kernel reports a socket's unacknowledged bytes on Linux only")
class FinalScrapeEOFTest(unittest.TestCase):
    def test_final_scrape_counts_only_if_the_scraper_could_complete_it(self):
        ep = MetricsEndpoint(host="127.0.0.1")  # prometheus_client's own app, as gunicorn workers use
        self.addCleanup(ep.close)
        server = ep._server
        real_shutdown = server.shutdown_request

        def slow_close(request):
            time.sleep(1.5)  # the FIN's way over a slowed link
            real_shutdown(request)

        server.shutdown_request = slow_close

        result = []
        waiter = threading.Thread(target=lambda: result.append(ep.wait_final_scrape(5)), daemon=True)
        waiter.start()
        until(lambda: ep._exit_began is not None, 10, "the exit began")
        time.sleep(0.01)

        ok, data = scrape(ep.port, ep.path)
        waiter.join(6)
        self.assertIn(b"200 OK", data.split(b"\r\n", 1)[0])
        if result == [True]:
            self.assertTrue(ok, "the endpoint counted a final scrape the scraper timed out on "
                                "(answer without Content-Length, ended by a close sent after the count): %r"
                            % data.split(b"\r\n\r\n", 1)[0])


if __name__ == "__main__":
    unittest.main()
