"""A final scrape counts only once the scraper received its whole answer in
time (docs/SOAK.md, "a final scrape that never arrived"; the Go worker's
TestFinalScrapeThatNeverArrived)."""

import socket
import struct
import sys
import threading
import unittest
import urllib.request

from workersd.endpoint import MetricsEndpoint

from agentproc import until


def padded_app(size):
    body = b"# TYPE test_requests counter\ntest_requests_total 7\n" + b"# padding\n" * (size // 10)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4"), ("Content-Length", str(len(body)))])
        return [body]

    return app


@unittest.skipUnless(sys.platform.startswith("linux"), "the kernel reports a socket's unacknowledged bytes on Linux only")
class FinalScrapeTest(unittest.TestCase):
    def check(self, size, read):
        """A scraper that sends its request after the exit began and reads
        read bytes of the answer (then resets the connection; 0: reads
        nothing, as over a cut link) does not make the final scrape; a
        scrape read whole after it does."""
        ep = MetricsEndpoint(host="127.0.0.1", app=padded_app(size))
        self.addCleanup(ep.close)
        result = []
        waiter = threading.Thread(target=lambda: result.append(ep.wait_final_scrape(20)))
        waiter.start()
        self.addCleanup(waiter.join, 25)
        until(lambda: ep._exit_began is not None, 10, "the exit began")

        bad = socket.socket()
        self.addCleanup(bad.close)
        bad.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        bad.connect(("127.0.0.1", ep.port))
        bad.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nX-Prometheus-Scrape-Timeout-Seconds: 1\r\n\r\n" % ep.path.encode())
        if read:
            bad.settimeout(10)
            self.assertTrue(bad.recv(read))
            bad.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, the rest unread
            bad.close()
        until(lambda: result or getattr(ep, "undelivered_scrapes", 0), 10, "the undelivered scrape counted or refused")
        self.assertEqual(result, [], "a scrape whose answer was never read counted as the final scrape")
        bad.close()

        req = urllib.request.Request("http://127.0.0.1:%d%s" % (ep.port, ep.path), headers={"X-Prometheus-Scrape-Timeout-Seconds": "5"})
        with urllib.request.urlopen(req, timeout=10) as r:
            self.assertIn(b"test_requests_total 7", r.read())
        waiter.join(10)
        self.assertEqual(result, [True])

    def test_unread_answer_is_not_the_final_scrape(self):
        self.check(20_000, 0)

    def test_cut_off_answer_is_not_the_final_scrape(self):
        self.check(20_000_000, 1)
