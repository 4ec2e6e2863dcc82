import gc
import unittest

from workersd import Tracer


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Counter:
    def __init__(self):
        self.value = 0.0

    def inc(self, amount=1):
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class TracerTest(unittest.TestCase):
    def test_accounts_in_flight_at_every_collect(self):
        clock, c = Clock(), Counter()
        t = Tracer(clock=clock)
        u = t.start(c)
        for want in (15, 30, 45):
            clock.now += 15
            t.collect()
            self.assertEqual(c.value, want)
        clock.now += 5
        self.assertEqual(u.end(), 50)
        self.assertEqual(c.value, 50)
        self.assertEqual(u.end(), 50, "a second end adds nothing")
        self.assertEqual(c.value, 50)
        self.assertEqual(t.in_flight(), 0)

    def test_context_manager(self):
        clock, c = Clock(), Counter()
        t = Tracer(clock=clock)
        with t.trace(c):
            clock.now += 2
            self.assertEqual(t.in_flight(), 1)
        self.assertEqual(c.value, 2)

    def test_clock_backwards_adds_nothing(self):
        clock, c = Clock(), Counter()
        t = Tracer(clock=clock)
        u = t.start(c)
        clock.now -= 10
        t.collect()
        u.end()
        self.assertEqual(c.value, 0)

    def test_max_age_abandons(self):
        clock, c = Clock(), Counter()
        t = Tracer(max_age=60, clock=clock)
        u = t.start(c)
        clock.now += 30
        t.collect()
        clock.now += 31
        t.collect()
        self.assertEqual(c.value, 30, "nothing beyond what earlier scrapes accounted")
        self.assertEqual(t.abandoned["max_age"], 1)
        u.end()
        self.assertEqual(c.value, 30)

    def test_unreachable_handle_abandons(self):
        clock, c = Clock(), Counter()
        t = Tracer(clock=clock)
        t.start(c)
        gc.collect()
        self.assertEqual(t.in_flight(), 0)
        self.assertEqual(t.abandoned["unreachable"], 1)

    def test_with_prometheus_client(self):
        try:
            from prometheus_client import CollectorRegistry, Counter as PCounter
        except ImportError:
            self.skipTest("prometheus_client is not installed")
        clock = Clock()
        reg = CollectorRegistry()
        c = PCounter("work_seconds", "", ["kind"], registry=reg)
        t = Tracer(clock=clock)
        u = t.start(c.labels("x"))
        clock.now += 1.5
        t.collect()
        self.assertEqual(reg.get_sample_value("work_seconds_total", {"kind": "x"}), 1.5)
        u.end()


if __name__ == "__main__":
    unittest.main()
