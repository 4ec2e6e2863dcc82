# frozen_string_literal: true

require "io/wait"
require "socket"

module Workersd
  # The worker's own /metrics: a TCP server on an ephemeral port, served
  # from background threads, so it answers whatever the application's
  # threads are doing.
  #
  # It also tells a worker that is about to exit when its last counts have
  # reached Prometheus: wait_final_scrape returns once a scrape of path that
  # began after the call has been received in full by the scraper in time.
  #
  # Handing the answer to the kernel is not enough: a scraper cut off from
  # the worker (a link cut or slowed just then) times out and stores nothing
  # (docs/SOAK.md, "a final scrape that never arrived"). While the worker
  # exits, a scrape counts once the kernel reports every byte of the answer
  # acknowledged by the peer (SIOCOUTQ 0, the connection still established)
  # before the request's start plus the timeout Prometheus sends
  # (X-Prometheus-Scrape-Timeout-Seconds) less a margin. Where the kernel
  # does not say (not Linux), a written answer counts. The Go worker and the
  # Python client do the same.
  class MetricsEndpoint
    READ_TIMEOUT = 10 # seconds a client may take to send its request
    MAX_HEAD = 16_384
    # Prometheus' default, for a request that names no timeout.
    DEFAULT_SCRAPE_TIMEOUT = 10.0
    # Linux: SIOCOUTQ (TIOCOUTQ), a socket's bytes not yet acknowledged;
    # TCP_INFO's first byte is the connection's state.
    SIOCOUTQ = 0x5411
    TCP_ESTABLISHED = 1
    TCP_CLOSE_WAIT = 8
    LINUX = RUBY_PLATFORM.include?("linux")

    attr_reader :port, :path

    # exposition: a callable returning the body of /metrics, either
    # [content_type, body] or a String in the text format 0.0.4. It is given
    # the scraper's Accept header if it takes an argument (an Exposition
    # does). before_scrape: callables run before each scrape is rendered (a
    # Tracer's collect). path: where Prometheus scrapes; /metrics answers as
    # well. log: where a scrape's failure is logged, once per cause.
    def initialize(exposition, host: ENV.fetch("WORKERSD_METRICS_HOST", "0.0.0.0"), path: "/metrics",
                   before_scrape: [], log: $stderr)
      @exposition = exposition
      @before_scrape = Array(before_scrape)
      @host = host
      @path = path
      @log = log
      @mutex = Mutex.new
      @scraped = ConditionVariable.new
      @exit_began = nil
      @final_scrapes = 0
      @final_failure = nil
      @undelivered_scrapes = 0
      @causes = {}
    end

    # Scrapes that began after the exit began whose answer the scraper did
    # not receive in time: none of them is the final scrape.
    attr_reader :undelivered_scrapes

    # Why the last scrape that ended a wait_final_scrape failed; nil if it
    # succeeded (or none did).
    attr_reader :final_failure

    def start
      @server = TCPServer.new(@host, 0)
      @port = @server.addr[1]
      @thread = Thread.new { accept_loop }
      @thread.name = "workersd metrics"
      self
    end

    # Waits up to timeout seconds for a scrape that begins from now on and
    # is sent completely; true if one was. Call it once nothing will count
    # any more: that scrape then carries every count to Prometheus.
    #
    # A scrape that begins from now on and fails to render (a 500) ends the
    # wait too, with false and final_failure set: the next would fail the
    # same way, and the exit need not wait the whole bound for it.
    def wait_final_scrape(timeout)
      deadline = monotonic + timeout
      @mutex.synchronize do
        @exit_began = monotonic
        @final_scrapes = 0
        @final_failure = nil
        # Signals and spurious wake-ups end a wait early: wait again.
        until @final_scrapes.positive?
          return false if @final_failure

          left = deadline - monotonic
          return false if left <= 0

          @scraped.wait(@mutex, left)
        end
        true
      end
    end

    # Renders the exposition once, as a scrape would; returns nil, or the
    # error a scrape would get now.
    def render_error
      render(OPENMETRICS_ACCEPT)
      nil
    rescue StandardError => e
      e
    end

    def close
      @server&.close
      @thread&.join(1)
    end

    private

    def accept_loop
      loop do
        begin
          client = @server.accept
        rescue IOError, Errno::EBADF
          return # closed
        rescue SystemCallError => e
          # Out of file descriptors, or a connection reset before accept:
          # the next scrape may fare better.
          log("/metrics: accept: #{e.message}")
          sleep 0.1
          next
        end
        Thread.new(client) { |c| serve(c) }
      end
    end

    def serve(client)
      head = read_head(client) or return
      began = monotonic
      method, target = head.lines.first.to_s.split(" ", 3)
      path = target.to_s.split("?", 2).first
      if method != "GET"
        respond(client, "405 Method Not Allowed", "text/plain", "GET only\n")
      elsif path != @path && path != "/metrics"
        respond(client, "404 Not Found", "text/plain", "metrics are at /metrics\n")
      else
        begin
          type, body = render(head[/^accept:[ \t]*(.*?)\r?$/i, 1])
        rescue StandardError => e
          failed(e, began, path == @path)
          respond(client, "500 Internal Server Error", "text/plain", "rendering the metrics failed: #{e.class}\n")
          return
        end
        deadline = scrape_deadline(head, began)
        sent = begin
          respond(client, "200 OK", type, body, deadline)
          true
        rescue SystemCallError, IOError
          false
        end
        # Only Prometheus' scrapes carry the counts away, not someone's
        # curl; a final one once the scraper has received it in time.
        if path == @path && final?(began)
          sent && delivered?(client, deadline) ? counted(began) : undelivered
        end
      end
    rescue SystemCallError, IOError
      # The scraper went away: nothing to answer.
    ensure
      client.close
    end

    def read_head(client)
      deadline = monotonic + READ_TIMEOUT
      head = +""
      until head.include?("\r\n\r\n") || head.include?("\n\n")
        return nil if head.bytesize > MAX_HEAD

        chunk = client.read_nonblock(4096, exception: false)
        case chunk
        when nil then return nil
        when :wait_readable
          left = deadline - monotonic
          return nil if left <= 0 || !client.wait_readable(left)
        else head << chunk
        end
      end
      head
    end

    OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"

    def render(accept)
      @before_scrape.each(&:call)
      callable = @exposition.respond_to?(:arity) ? @exposition : @exposition.method(:call)
      out = callable.arity.zero? ? callable.call : callable.call(accept)
      out.is_a?(Array) ? out : [Exposition::TEXT, out.to_s]
    end

    # Writes the answer by deadline, or raises IOError: a scraper that
    # stopped reading does not hold the thread for ever.
    def respond(client, status, type, body, deadline = monotonic + READ_TIMEOUT)
      [+"HTTP/1.1 #{status}\r\nContent-Type: #{type}\r\n" \
       "Content-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n", body].each do |data|
        off = 0
        while off < data.bytesize
          n = client.write_nonblock(data.byteslice(off, 1 << 20), exception: false)
          if n == :wait_writable
            left = deadline - monotonic
            raise IOError, "the scraper did not read the answer in time" if left <= 0 || !client.wait_writable(left)
          else
            off += n
          end
        end
      end
    end

    # A scrape failed: logged once per cause (the exception's class and
    # where it was raised, since its message may differ at every scrape).
    def failed(error, began, own)
      cause = "#{error.class} #{error.backtrace&.first}"
      first = @mutex.synchronize do
        if own && @exit_began && began >= @exit_began
          @final_failure = error
          @scraped.broadcast
        end
        @causes.size < 100 && !@causes.key?(cause) && (@causes[cause] = true)
      end
      return unless first

      log("/metrics fails: #{error.class}: #{error.message[0, 300]} (at #{error.backtrace&.first}); " \
          "scrapes answer 500 (logged once per cause)")
    end

    def log(msg)
      @log.puts("workersd: #{msg}")
    rescue IOError
      nil
    end

    def counted(began)
      @mutex.synchronize do
        if @exit_began && began >= @exit_began
          @final_scrapes += 1
          @scraped.broadcast
        end
      end
    end

    def final?(began)
      @mutex.synchronize { @exit_began && began >= @exit_began }
    end

    def scrape_deadline(head, began)
      timeout = Float(head[/^x-prometheus-scrape-timeout-seconds:[ \t]*(.*?)\r?$/i, 1].to_s, exception: false)
      timeout = DEFAULT_SCRAPE_TIMEOUT unless timeout&.positive? && timeout < 1e6
      began + timeout - [timeout / 10, 0.5].min
    end

    # Whether the peer acknowledged everything written to client by
    # deadline.
    def delivered?(client, deadline)
      loop do
        n = unacked(client)
        return true if n.nil? || n.zero?
        return false if n.negative? || monotonic >= deadline

        sleep 0.002
      end
    end

    def undelivered
      @mutex.synchronize { @undelivered_scrapes += 1 }
    end

    # Bytes written to client its peer has not acknowledged; -1 once the
    # connection is no longer established (a reset empties the queue); nil
    # when the kernel does not say.
    def unacked(client)
      return nil unless LINUX

      state = client.getsockopt(Socket::IPPROTO_TCP, Socket::TCP_INFO).data.unpack1("C")
      buf = [0].pack("i")
      client.ioctl(SIOCOUTQ, buf)
      return -1 unless [TCP_ESTABLISHED, TCP_CLOSE_WAIT].include?(state)

      buf.unpack1("i")
    rescue NameError, NotImplementedError, SystemCallError, IOError
      nil
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end

  # Deprecated: the name of MetricsEndpoint before docs/CLIENTS.md.
  Endpoint = MetricsEndpoint
end
