# frozen_string_literal: true

require "securerandom"

module Workersd
  # Parses "name=value,name2=value2" ($WORKERSD_LABELS by default) into a
  # Hash (docs/CLIENTS.md): white space around names and values is
  # stripped, empty items are skipped; an item without "=" or a name, or a
  # name given twice, raises ArgumentError naming it, since dropping it would
  # register the worker without a label its user asked for.
  def self.labels_from_env(value = ENV.fetch("WORKERSD_LABELS", ""))
    value.split(",").each_with_object({}) do |item, out|
      next if item.strip.empty?

      name, eq, val = item.partition("=")
      name = name.strip
      raise ArgumentError, "workersd: WORKERSD_LABELS: #{item.strip.inspect} is not name=value" if eq.empty? || name.empty?
      raise ArgumentError, "workersd: WORKERSD_LABELS: label #{name.inspect} is given twice" if out.key?(name)

      out[name] = val.strip
    end
  end

  # $name as a number of seconds >= 0, default when unset or empty; any
  # other value raises ArgumentError naming the variable (docs/CLIENTS.md).
  def self.env_seconds(name, default)
    raw = ENV.fetch(name, "").strip
    return default if raw.empty?

    value = Float(raw, exception: false)
    raise ArgumentError, "workersd: #{name}: #{raw.inspect} is not a number of seconds >= 0" unless value&.finite? && value >= 0

    value
  end

  # One worker process as a Prometheus target: start it once the process
  # is forked, stop it as the process ends (gracefully).
  #
  # start serves /metrics on an ephemeral port, then registers with the
  # agent from a background thread, so the worker never waits for the
  # agent: while the agent is down or starting (no socket, refused, 503),
  # it retries with backoff until it answers or stop is called.
  #
  # stop waits (bounded) for one more scrape, so that everything counted
  # reaches Prometheus, then deregisters. A worker that dies without stop
  # (kill -9) is removed by the agent, which watches the process.
  class Worker
    attr_reader :endpoint

    # job: the Prometheus job; default $WORKERSD_JOB (one or the other is
    # required). labels: extra target labels; default $WORKERSD_LABELS
    # (Workersd.labels_from_env).
    # exposition: what /metrics serves (see MetricsEndpoint); default an
    # Exposition of Prometheus::Client.registry (prometheus-client or
    # prometheus-client-mmap), whichever the application loads.
    # before_scrape: callables run before each scrape (Tracer#collect).
    # final_scrape_timeout: seconds stop waits for the final scrape; above
    # Prometheus' discovery delay (5 s) plus a scrape interval, since a
    # young worker's first scrape comes that late.
    # backoff_max: the longest pause between registration attempts.
    def initialize(job: ENV.fetch("WORKERSD_JOB", nil), labels: nil, exposition: nil, before_scrape: [],
                   final_scrape_timeout: Workersd.env_seconds("WORKERSD_FINAL_SCRAPE_TIMEOUT", 15.0),
                   backoff_max: 1.0, agent: Agent.new, log: $stderr)
      unless job.is_a?(String) && !job.empty?
        raise ArgumentError, "workersd: no job: pass job: (a non-empty String) or set WORKERSD_JOB"
      end

      before_scrape = Array(before_scrape)
      bad = before_scrape.reject { |h| h.respond_to?(:call) }
      raise ArgumentError, "before_scrape: not callable: #{bad.inspect}" unless bad.empty?

      @job = job
      @labels = labels.nil? ? Workersd.labels_from_env : labels
      @exposition = exposition || Exposition.new
      @before_scrape = before_scrape
      @final_scrape_timeout = final_scrape_timeout
      @backoff_max = backoff_max
      @agent = agent
      @log = log
      @mutex = Mutex.new
      @wake = ConditionVariable.new
      @stopping = false
      @registered = false
    end

    # Serves /metrics and starts registering; returns at once.
    #
    # Prometheus is given a path of this worker's own to scrape: after the
    # worker exits, Prometheus keeps scraping its address until its
    # discovery catches up (up to 5 s), and another process may have bound
    # that port meanwhile; on a path of its own the stale scrape fails
    # instead of counting that process' metrics a second time.
    def start
      @exposition.reset_inherited! if @exposition.respond_to?(:reset_inherited!)
      @endpoint = MetricsEndpoint.new(@exposition, path: Worker.own_metrics_path, before_scrape: @before_scrape, log: @log).start
      @thread = Thread.new { register_until_done }
      @thread.name = "workersd register"
      self
    end

    # A metrics path only this process serves: /metrics/<pid>-<16 hex
    # digits> (docs/KEYS.md; Go's registrar.OwnMetricsPath).
    def self.own_metrics_path(pid = Process.pid)
      "/metrics/#{pid}-#{SecureRandom.hex(8)}"
    end

    def registered?
      @mutex.synchronize { @registered }
    end

    # Stops registering; if registered, waits for the final scrape and
    # deregisters. Call it once the worker has stopped counting.
    #
    # A final scrape that cannot succeed is not waited for: if rendering the
    # metrics fails now, stop logs it and deregisters at once; if a scrape
    # during the wait fails, the wait ends there.
    def stop
      @mutex.synchronize do
        return if @stopping

        @stopping = true
        @wake.broadcast
      end
      # An attempt in flight ends within the agent's answer time.
      @thread&.join
      if registered?
        if (err = @endpoint.render_error)
          log("not waiting for a final scrape of pid #{Process.pid}: rendering its metrics fails " \
              "(#{err.class}: #{err.message[0, 200]}); its last counts are lost")
        elsif !@endpoint.wait_final_scrape(@final_scrape_timeout)
          if (err = @endpoint.final_failure)
            log("the final scrape of pid #{Process.pid} failed (#{err.class}); its last counts are lost")
          else
            log("no final scrape of pid #{Process.pid} within #{@final_scrape_timeout}s; its last counts may be lost")
          end
        end
        begin
          @agent.deregister(Process.pid)
        rescue AgentError => e
          # The agent removes it anyway once this process exits.
          log("deregistration of pid #{Process.pid} failed: #{e.message}")
        end
      end
      @endpoint&.close
    end

    private

    def register_until_done
      delay = 0.1
      warned = false
      until stopping?
        begin
          reg = @agent.register(job: @job, port: @endpoint.port, labels: @labels, metrics_path: @endpoint.path)
          @mutex.synchronize { @registered = true }
          log("registered pid #{Process.pid} port #{@endpoint.port}: slot #{reg["slot"]}, #{reg["state"]} #{reg["key"]}".rstrip)
          return
        rescue AgentError => e
          unless e.retryable?
            log("registration failed for pid #{Process.pid}: #{e.message}; it will not be scraped")
            return
          end
          unless warned
            log("agent unreachable for pid #{Process.pid} (#{[e.status, e.error].compact.join(" ")}); retrying until it answers")
            warned = true
          end
        end
        pause(delay)
        delay = [delay * 2, @backoff_max].min
      end
    end

    def stopping?
      @mutex.synchronize { @stopping }
    end

    # Sleeps delay seconds, or less if stop is called meanwhile.
    def pause(delay)
      @mutex.synchronize { @wake.wait(@mutex, delay) unless @stopping }
    end

    def log(msg)
      @log.puts("workersd: #{msg}")
    rescue IOError
      nil
    end
  end
end
