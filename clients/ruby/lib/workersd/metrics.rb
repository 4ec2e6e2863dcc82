# frozen_string_literal: true

module Workersd
  # The few calls the hooks and the Tracer make on the application's
  # metrics, for both Ruby clients: prometheus-client (client_ruby:
  # counter(name, docstring:, labels:), increment(by:, labels:)) and
  # prometheus-client-mmap (counter(name, docstring), increment(labels, by)).
  module Metrics
    module_function

    # The default registry, Prometheus::Client.registry.
    def registry
      require "prometheus/client"
      ::Prometheus::Client.registry
    end

    # The counter called name in registry, created unless it exists.
    def counter(name, docstring, labels: [], registry: self.registry)
      define(registry, :counter, name, docstring, labels)
    end

    # The gauge called name in registry, created unless it exists.
    def gauge(name, docstring, labels: [], registry: self.registry)
      define(registry, :gauge, name, docstring, labels)
    end

    def increment(counter, by, labels = {})
      if keywords?(counter.method(:increment))
        counter.increment(by: by, labels: labels)
      else
        counter.increment(labels, by)
      end
    end

    def set(gauge, value, labels = {})
      if keywords?(gauge.method(:set))
        gauge.set(value, labels: labels)
      else
        gauge.set(labels, value)
      end
    end

    # Makes each label set's series exist at 0 (client_ruby only; with
    # prometheus-client-mmap a series exists once it is first used).
    def init(metric, label_sets)
      return unless metric.respond_to?(:init_label_set)

      label_sets.each { |l| metric.init_label_set(l) }
    end

    def define(registry, type, name, docstring, labels)
      name = name.to_sym
      existing = registry.get(name)
      return existing if existing

      if keywords?(registry.method(type))
        registry.public_send(type, name, docstring: docstring, labels: labels)
      else
        registry.public_send(type, name, docstring)
      end
    rescue StandardError => e
      # Another thread registered it meanwhile.
      registry.get(name) || raise(e)
    end

    def keywords?(method)
      method.parameters.any? { |kind, name| %i[key keyreq].include?(kind) && %i[by docstring labels].include?(name) }
    end
  end
end
