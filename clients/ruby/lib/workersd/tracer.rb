# frozen_string_literal: true

module Workersd
  # Adds the time of units of work in flight to counters as it passes, not
  # in one piece when a unit ends (Go's worker.Tracer, the Python client's
  # Tracer).
  #
  # A job that runs 60 s while Prometheus scrapes every 15 s adds about 15 s
  # at each scrape instead of nothing, nothing, nothing, then 60 s: rate()
  # over any window shows the work as it happens. collect (give it to
  # Worker's before_scrape) adds to each unit's counter the seconds since
  # the unit was last accounted; Unit#end adds the rest, so a counter's
  # total is the true elapsed time once every unit has ended.
  #
  # A unit in flight longer than max_age seconds (default an hour; nil: no
  # bound) is abandoned: nothing more is added and it is dropped, so a lost
  # end cannot make a counter grow for ever. A unit whose handle is garbage
  # collected without end is abandoned likewise (at the first collect after
  # the collection). abandoned counts both, by reason.
  #
  # Counters are those of prometheus-client (increment(by:, labels:)) or of
  # prometheus-client-mmap (increment(labels, by)). Safe for use from
  # several threads.
  class Tracer
    DEFAULT_MAX_AGE = 3600.0

    attr_reader :max_age

    def initialize(max_age: DEFAULT_MAX_AGE, clock: -> { Process.clock_gettime(Process::CLOCK_MONOTONIC) })
      @max_age = max_age
      @clock = clock
      @mutex = Mutex.new
      @units = {}
      @abandoned = { "unreachable" => 0, "max_age" => 0 }
      # Filled by finalizers, which must not take @mutex: they may run in a
      # thread that holds it.
      @unreachable = Queue.new
    end

    # Begins a unit of work accounted to counter (with labels); call end on
    # the handle it returns.
    def start(counter, labels = {})
      u = Record.new(counter, labels.freeze, @clock.call)
      handle = Unit.new(self, u)
      @mutex.synchronize { @units[u.object_id] = u }
      ObjectSpace.define_finalizer(handle, self.class.finalizer(@unreachable, u))
      handle
    end

    # Runs the block as one unit accounted to counter; returns its value.
    def trace(counter, labels = {})
      unit = start(counter, labels)
      begin
        yield
      ensure
        unit.end
      end
    end

    # Accounts every unit in flight up to now. Run it before each scrape.
    def collect
      now = @clock.call
      @mutex.synchronize do
        drain_unreachable
        @units.each_value.to_a.each do |u|
          if @max_age && now - u.start > @max_age
            drop(u)
            @abandoned["max_age"] += 1
          else
            account(u, now)
          end
        end
      end
      nil
    end

    # The number of units not yet ended.
    def in_flight
      @mutex.synchronize do
        drain_unreachable
        @units.size
      end
    end

    # Units dropped without end, by reason ("unreachable", "max_age").
    def abandoned
      @mutex.synchronize do
        drain_unreachable
        @abandoned.dup
      end
    end

    # Ends u now; returns how long it ran (up to its abandonment, if that
    # came first).
    def finish(u)
      now = @clock.call
      @mutex.synchronize do
        unless u.done
          account(u, now)
          drop(u)
        end
        u.last - u.start
      end
    end

    # The finalizer of a unit's handle: it holds the record, not the
    # handle, which could otherwise never be collected.
    def self.finalizer(queue, record)
      proc { queue << record }
    end

    private

    def drain_unreachable
      until @unreachable.empty?
        u = @unreachable.pop(true)
        next if u.done

        drop(u)
        @abandoned["unreachable"] += 1
      end
    rescue ThreadError
      nil
    end

    # A clock that went backwards adds nothing rather than a negative amount
    # a counter refuses.
    def account(u, now)
      return unless now > u.last

      Metrics.increment(u.counter, now - u.last, u.labels)
      u.last = now
    end

    def drop(u)
      u.done = true
      @units.delete(u.object_id)
    end

    Record = Struct.new(:counter, :labels, :start, :last, :done) do
      def initialize(counter, labels, now)
        super(counter, labels, now, now, false)
      end
    end

    # An in-flight unit of work (its handle: the tracer keeps the record
    # apart, so that the handle's collection tells that nobody can end it).
    class Unit
      def initialize(tracer, record)
        @tracer = tracer
        @record = record
      end

      # Finishes the unit, accounting its remaining time; returns how long
      # it ran in seconds. Calling it again has no effect.
      def end
        @tracer.finish(@record)
      end
    end
  end
end
