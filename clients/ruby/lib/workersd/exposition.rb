# frozen_string_literal: true

module Workersd
  # The pid of the process that loaded this gem: a worker whose pid differs
  # was forked from it, and the metrics it holds at its start are its
  # master's (preload_app!, Passenger's smart spawning).
  LOADED_BY = Process.pid

  # Renders the metrics registry the application already has, that of
  # prometheus-client (client_ruby, its in-process data store) or of
  # prometheus-client-mmap, for Prometheus: every type (counter, gauge,
  # histogram, summary) of Prometheus::Client.registry (or of the registry
  # given), as OpenMetrics to a scraper that asks for it (Prometheus 3 asks
  # first), with a _created sample per counter, histogram and summary series
  # at the worker's start, else as the text format 0.0.4. It reads the
  # registry's values itself: prometheus-client-mmap's own Text.marshal
  # fails on histograms and summaries.
  #
  # The created timestamp is how Prometheus 3 (with
  # --enable-feature=created-timestamp-zero-ingestion) sees that a worker
  # restarted on a reused instance, so job-wide totals stay exact; it is
  # the worker's start (reset_inherited!, which Worker#start calls). Counts a
  # forked worker inherited from its master start anew there too: what a
  # counter, histogram or summary held at the worker's start is subtracted
  # from what this worker serves (gauges are served as they are).
  #
  # Counters are served as <name>_total whether or not their name ends in
  # _total, in both formats, as OpenMetrics requires.
  #
  # With client_ruby, keep its default in-process data store: its
  # DirectFileStore sums every process' values, and each worker would serve
  # the whole server's.
  #
  # An Exposition is a callable for MetricsEndpoint: call(accept) returns
  # [content_type, body].
  class Exposition
    OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    TEXT = "text/plain; version=0.0.4; charset=utf-8"
    # Types whose samples start anew in a forked worker and carry _created.
    CUMULATIVE = %i[counter histogram summary].freeze

    # registry: nil for Prometheus::Client.registry, looked up at each
    # scrape (the application may load prometheus/client after the worker
    # started, as Puma does without preload_app!).
    def initialize(registry = nil)
      @registry = registry
      @mutex = Mutex.new
      @created = now
      @baseline = {}
    end

    # The worker starts: created timestamps are now, and if this process
    # was forked from the one that loaded the gem, every cumulative sample
    # it holds (its master's) is subtracted from now on.
    def reset_inherited!
      base = {}
      if Process.pid != LOADED_BY && (reg = registry)
        reg.metrics.each do |m|
          type = m.type.to_sym
          next unless CUMULATIVE.include?(type)
          # prometheus-client-mmap's values are objects: set to 0 in place.
          next if reset_in_place(m, type)

          # client_ruby's data store has no reset: what it held is
          # subtracted from now on.
          family(m).samples.each { |suffix, labels, value| base[[m.name.to_s.delete_suffix("_total"), suffix, labels]] = value }
        end
      end
      @mutex.synchronize do
        @baseline = base
        @created = now
      end
      self
    end

    def call(accept = nil)
      om = accept.to_s.include?("application/openmetrics-text")
      base, created = @mutex.synchronize { [@baseline, @created] }
      out = +""
      families.each { |f| om ? openmetrics(out, f, base, created) : text(out, f, base) }
      om ? [OPENMETRICS, out << "# EOF\n"] : [TEXT, out]
    end

    # The registry served now; nil while prometheus/client is not loaded.
    def registry
      return @registry if @registry
      return nil unless defined?(::Prometheus::Client) && ::Prometheus::Client.respond_to?(:registry)

      ::Prometheus::Client.registry
    end

    Family = Struct.new(:name, :type, :help, :samples)

    # Every metric of the registry as [name, type, help, samples], samples
    # [suffix, labels (String => String), value].
    def families
      reg = registry or return []
      reg.metrics.map { |m| family(m) }
    end

    private

    def family(m)
      type = m.type.to_sym
      name = m.name.to_s
      name = name.delete_suffix("_total") if type == :counter
      base = m.respond_to?(:base_labels) ? m.base_labels : {}
      samples = []
      series(m, type).each do |labels, v|
        labels = stringify(base.merge(labels))
        case type
        when :histogram then histogram(samples, labels, v)
        when :summary then summary(samples, labels, v)
        when :counter then samples << ["_total", labels, value(v)]
        else samples << ["", labels, value(v)]
        end
      end
      Family.new(name, type, m.docstring.to_s, samples)
    end

    # Sets every value object of m to 0; false if its values are not
    # objects (client_ruby).
    def reset_in_place(m, type)
      objects = series(m, type).values.flat_map do |v|
        case type
        when :counter then [v]
        when :histogram then v.respond_to?(:total) ? [v.sum, v.total, v.total_inf, *v.values] : [v]
        else v.respond_to?(:total) ? [v.sum, v.total] : [v]
        end
      end
      return false unless objects.all? { |o| o.respond_to?(:set) }

      objects.each { |o| o.set(0.0) }
      true
    end

    # label set => value: a number or value object (gauges, counters), a
    # Hash of buckets with "sum" (client_ruby's histograms), of "count" and
    # "sum" (its summaries), or prometheus-client-mmap's Value objects.
    def series(metric, type)
      # prometheus-client-mmap's Summary#values gives each series' sum
      # only; its count is in the Value it keeps.
      if type == :summary && metric.instance_variable_defined?(:@values)
        all = metric.instance_variable_get(:@values)
        return all.dup if all.is_a?(Hash) && all.each_value.all? { |v| v.respond_to?(:total) }
      end
      metric.values
    end

    def histogram(samples, labels, v)
      if v.respond_to?(:total) # prometheus-client-mmap: cumulative buckets
        count = value(v.total)
        v.each { |le, b| samples << ["_bucket", labels.merge("le" => le_string(le)), value(b)] }
        samples << ["_bucket", labels.merge("le" => "+Inf"), count]
        samples << ["_count", labels, count] << ["_sum", labels, value(v.sum)]
      else # client_ruby: {"0.005" => cumulative count, ..., "+Inf" => count, "sum" => sum}
        v.each do |le, b|
          samples << ["_bucket", labels.merge("le" => le_string(le)), value(b)] unless le.to_s == "sum"
        end
        samples << ["_count", labels, value(v["+Inf"])] << ["_sum", labels, value(v["sum"])]
      end
    end

    def summary(samples, labels, v)
      if v.respond_to?(:total)
        samples << ["_count", labels, value(v.total)] << ["_sum", labels, value(v.sum)]
      else
        samples << ["_count", labels, value(v["count"])] << ["_sum", labels, value(v["sum"])]
      end
    end

    def value(v)
      v = v.get if v.respond_to?(:get)
      v.is_a?(Numeric) ? v : Float(v)
    end

    def le_string(le)
      return le.to_s unless le.is_a?(Numeric)
      return "+Inf" if le.to_f.infinite?

      Float(le).to_s
    end

    def stringify(labels)
      labels.to_h { |k, v| [k.to_s, v.to_s] }
    end

    def openmetrics(out, f, base, created)
      type = f.type == :untyped ? "unknown" : f.type
      out << "# TYPE #{f.name} #{type}\n# HELP #{f.name} #{escape(f.help)}\n"
      cumulative = CUMULATIVE.include?(f.type)
      # Each series' samples, then its _created: Prometheus reads a
      # series' created timestamp from the _created that follows it.
      f.samples.chunk { |_, labels, _| labels.reject { |k, _| k == "le" } }.each do |labels, samples|
        samples.each do |suffix, l, v|
          out << "#{f.name}#{suffix}#{selector(l)} #{number(rebased(base, f, suffix, l, v))}\n"
        end
        out << "#{f.name}_created#{selector(labels)} #{format("%.3f", created)}\n" if cumulative
      end
    end

    def text(out, f, base)
      name = f.type == :counter ? "#{f.name}_total" : f.name
      type = %i[counter gauge histogram summary].include?(f.type) ? f.type : "untyped"
      out << "# HELP #{name} #{escape(f.help, help: true)}\n# TYPE #{name} #{type}\n"
      f.samples.each do |suffix, l, v|
        out << "#{f.name}#{suffix}#{selector(l)} #{number(rebased(base, f, suffix, l, v))}\n"
      end
    end

    def rebased(base, family, suffix, labels, value)
      b = base[[family.name, suffix, labels]]
      b ? value - b : value
    end

    def selector(labels)
      return "" if labels.empty?

      "{" + labels.map { |k, v| "#{k}=\"#{escape(v)}\"" }.join(",") + "}"
    end

    # Label values, and OpenMetrics' help, escape quotes too; the text
    # format's help does not.
    def escape(s, help: false)
      s = s.to_s.encode("UTF-8", invalid: :replace, undef: :replace).gsub("\\", "\\\\\\\\").gsub("\n", "\\n")
      help ? s : s.gsub('"', '\\"')
    end

    def number(v)
      return v.to_s if v.is_a?(Integer)

      v = v.to_f
      return "NaN" if v.nan?
      return v.positive? ? "+Inf" : "-Inf" if v.infinite?
      return v.to_i.to_s if v == v.floor && v.abs < 1e15

      v.to_s
    end

    def now
      Process.clock_gettime(Process::CLOCK_REALTIME)
    end
  end
end
