# frozen_string_literal: true

module Workersd
  # Counters kept in this process and rendered for Prometheus: OpenMetrics,
  # with each series' created timestamp, to a scraper that accepts it
  # (Prometheus 3 asks for it first), else the text format 0.0.4.
  #
  # The created timestamp is how Prometheus 3 (with
  # --enable-feature=created-timestamp-zero-ingestion) sees that a worker
  # restarted on a reused instance, so job-wide totals stay exact; it must
  # be this worker's own (see reset_inherited!).
  #
  # A Registry is also an exposition for Endpoint: call(accept) returns
  # [content_type, body].
  class Registry
    OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    TEXT = "text/plain; version=0.0.4; charset=utf-8"

    def initialize
      @mutex = Mutex.new
      @counters = {}
      @pid = Process.pid
    end

    # The counter called name (with or without its _total suffix), created
    # on first use; labels are the names every increment must give.
    def counter(name, docstring:, labels: [])
      c = Counter.new(name, docstring, labels)
      @mutex.synchronize do
        old = @counters[c.name]
        return @counters[c.name] = c unless old
        raise ArgumentError, "counter #{c.name} exists with other labels" unless old.labels == c.labels

        old
      end
    end

    # Starts every counter anew (value 0, created now) if this process did
    # not create them: a worker forked from a master that loaded the
    # application (Puma's preload_app!) would otherwise show the master's
    # start, which Prometheus drops on a reused instance. Worker#start calls
    # it.
    def reset_inherited!
      @mutex.synchronize do
        return if @pid == Process.pid

        @counters.each_value(&:reset!)
        @pid = Process.pid
      end
    end

    def call(accept = nil)
      counters = @mutex.synchronize { @counters.values }
      if accept.to_s.include?("application/openmetrics-text")
        [OPENMETRICS, counters.map(&:openmetrics).join + "# EOF\n"]
      else
        [TEXT, counters.map(&:text).join]
      end
    end
  end

  # A monotonic counter, per label set; safe to increment from any thread.
  class Counter
    NAME = /\A[a-zA-Z_:][a-zA-Z0-9_:]*\z/.freeze
    LABEL = /\A[a-zA-Z_][a-zA-Z0-9_]*\z/.freeze

    attr_reader :name, :labels

    def initialize(name, docstring, labels)
      @name = name.to_s.delete_suffix("_total")
      raise ArgumentError, "invalid metric name #{name.inspect}" unless NAME.match?(@name)

      @labels = labels.map(&:to_sym)
      bad = @labels.reject { |l| LABEL.match?(l) && !l.start_with?("__") }
      raise ArgumentError, "invalid label names #{bad.inspect}" unless bad.empty?

      @docstring = docstring.to_s
      @mutex = Mutex.new
      @series = {} # label values => [value, created]
      init_label_set({}) if @labels.empty?
    end

    def increment(by: 1, labels: {})
      raise ArgumentError, "a counter only goes up: #{by}" unless by >= 0

      key = key(labels)
      @mutex.synchronize { (@series[key] ||= [0, now])[0] += by }
    end

    def get(labels: {})
      key = key(labels)
      @mutex.synchronize { @series.fetch(key, [0])[0] }
    end

    # Makes the series exist at 0, created now: Prometheus sees it (and its
    # start) before its first increment.
    def init_label_set(labels)
      key = key(labels)
      @mutex.synchronize { @series[key] ||= [0, now] }
      nil
    end

    def reset!
      @mutex.synchronize do
        created = now
        @series.each_value { |s| s.replace([0, created]) }
      end
    end

    def openmetrics
      out = +"# TYPE #{@name} counter\n# HELP #{@name} #{escape(@docstring)}\n"
      snapshot.each do |key, (value, created)|
        sel = selector(key)
        out << "#{@name}_total#{sel} #{number(value)}\n" << "#{@name}_created#{sel} #{format("%.3f", created)}\n"
      end
      out
    end

    def text
      out = +"# HELP #{@name}_total #{escape(@docstring, help: true)}\n# TYPE #{@name}_total counter\n"
      snapshot.each { |key, (value, _)| out << "#{@name}_total#{selector(key)} #{number(value)}\n" }
      out
    end

    private

    def key(labels)
      given = labels.to_h { |k, v| [k.to_sym, v.to_s] }
      unless given.keys.sort == @labels.sort
        raise ArgumentError, "#{@name}: labels #{given.keys.inspect}, want #{@labels.inspect}"
      end

      @labels.map { |l| given[l] }.freeze
    end

    def snapshot
      @mutex.synchronize { @series.map { |k, s| [k, s.dup] } }
    end

    def selector(key)
      return "" if key.empty?

      "{" + @labels.zip(key).map { |l, v| "#{l}=\"#{escape(v)}\"" }.join(",") + "}"
    end

    # Label values, and OpenMetrics' help, escape quotes too; the text
    # format's help does not.
    def escape(s, help: false)
      s = s.gsub("\\", "\\\\\\\\").gsub("\n", "\\n")
      help ? s : s.gsub('"', '\\"')
    end

    def number(v)
      return v.to_s if v.is_a?(Integer)
      return "+Inf" if v.infinite?
      return v.to_i.to_s if v == v.floor && v.abs < 1e15

      v.to_s
    end

    def now
      Process.clock_gettime(Process::CLOCK_REALTIME)
    end
  end
end
