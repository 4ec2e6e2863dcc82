"""Accounting of long units of work at every scrape (as Go's worker.Tracer)."""

import threading
import time
import weakref

DEFAULT_MAX_AGE = 3600.0


class Tracer:
    """Adds the time of in-flight units of work to counters as it passes,
    not in one piece when a unit ends.

    A task that runs 60 s while Prometheus scrapes every 15 s adds about
    15 s at each scrape instead of nothing, nothing, nothing, then 60 s:
    rate() over any window shows the work as it happens. collect() (run
    before each scrape: give it to Worker's before_scrape) adds to each
    unit's counter the seconds since the unit was last accounted; end()
    adds the rest, so a counter's total is the true elapsed time once every
    unit has ended.

    A unit in flight longer than max_age seconds (default an hour; None: no
    bound) is abandoned: nothing more is added and it is dropped, so a lost
    end() cannot make a counter grow for ever. A unit whose handle is
    garbage-collected without end() is abandoned likewise.

    Counters are anything with inc(amount): prometheus_client's Counter, or
    a child of one with labels. Safe for use from several threads.
    """

    def __init__(self, max_age=DEFAULT_MAX_AGE, clock=time.monotonic):
        self._clock = clock
        self._max_age = max_age
        self._lock = threading.Lock()
        self._units = {}
        self.abandoned = {"unreachable": 0, "max_age": 0}

    def start(self, counter):
        """Begins a unit of work accounted to counter; call end() on the
        returned handle (or use it as a context manager)."""
        now = self._clock()
        u = _Unit(counter, now)
        h = Unit(self, u)
        with self._lock:
            self._units[id(u)] = u
        weakref.finalize(h, self._abandon, u, "unreachable")
        return h

    def trace(self, counter):
        """with tracer.trace(counter): ... accounts the block's time."""
        return self.start(counter)

    def collect(self):
        """Accounts every unit in flight up to now."""
        now = self._clock()
        with self._lock:
            for u in list(self._units.values()):
                if self._max_age is not None and now - u.start > self._max_age:
                    self._drop(u)
                    self.abandoned["max_age"] += 1
                    continue
                self._account(u, now)

    def in_flight(self):
        """The number of units not yet ended."""
        with self._lock:
            return len(self._units)

    def _end(self, u):
        now = self._clock()
        with self._lock:
            if u.done:
                return u.last - u.start
            self._account(u, now)
            self._drop(u)
            return u.last - u.start

    def _abandon(self, u, reason):
        with self._lock:
            if u.done:
                return
            self._drop(u)
            self.abandoned[reason] += 1

    @staticmethod
    def _account(u, now):
        # A clock that went backwards adds nothing rather than a negative
        # amount a counter refuses.
        if now > u.last:
            u.counter.inc(now - u.last)
            u.last = now

    def _drop(self, u):
        u.done = True
        self._units.pop(id(u), None)


class _Unit:
    __slots__ = ("counter", "start", "last", "done")

    def __init__(self, counter, now):
        self.counter, self.start, self.last, self.done = counter, now, now, False


class Unit:
    """An in-flight unit of work (its handle: the tracer keeps the record
    apart, so that the handle's collection tells nobody can end it)."""

    def __init__(self, tracer, u):
        self._tracer, self._u = tracer, u

    def end(self):
        """Finishes the unit, accounting its remaining time; returns how
        long it ran. Calling it again has no effect."""
        return self._tracer._end(self._u)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.end()
        return False
