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
  # began after the call has been sent in full.
  class Endpoint
    READ_TIMEOUT = 10 # seconds a client may take to send its request
    MAX_HEAD = 16_384

    attr_reader :port, :path

    # exposition: a callable returning the body of /metrics, either
    # [content_type, body] or a String in the text format 0.0.4. It is given
    # the scraper's Accept header if it takes an argument (a Registry does).
    # path: where Prometheus scrapes; /metrics answers as well.
    def initialize(exposition, host: ENV.fetch("WORKERSD_METRICS_HOST", "0.0.0.0"), path: "/metrics")
      @exposition = exposition
      @host = host
      @path = path
      @mutex = Mutex.new
      @scraped = ConditionVariable.new
      @exit_began = nil
      @final_scrapes = 0
    end

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
    def wait_final_scrape(timeout)
      deadline = monotonic + timeout
      @mutex.synchronize do
        @exit_began = monotonic
        @final_scrapes = 0
        # Signals and spurious wake-ups end a wait early: wait again.
        until @final_scrapes.positive?
          left = deadline - monotonic
          return false if left <= 0

          @scraped.wait(@mutex, left)
        end
        true
      end
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
          warn "workersd: /metrics: accept: #{e.message}"
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
        type, body = render(head[/^accept:[ \t]*(.*?)\r?$/i, 1])
        respond(client, "200 OK", type, body)
        # Only Prometheus' scrapes carry the counts away, not someone's curl.
        counted(began) if path == @path
      end
    rescue SystemCallError, IOError
      # The scraper went away: nothing to answer.
    rescue StandardError => e
      warn "workersd: /metrics: #{e.class}: #{e.message}"
      begin
        respond(client, "500 Internal Server Error", "text/plain", "#{e.class}\n")
      rescue SystemCallError, IOError
        nil
      end
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

    def render(accept)
      callable = @exposition.respond_to?(:arity) ? @exposition : @exposition.method(:call)
      out = callable.arity.zero? ? callable.call : callable.call(accept)
      out.is_a?(Array) ? out : [Registry::TEXT, out.to_s]
    end

    def respond(client, status, type, body)
      client.write("HTTP/1.1 #{status}\r\nContent-Type: #{type}\r\n" \
                   "Content-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n", body)
    end

    def counted(began)
      @mutex.synchronize do
        if @exit_began && began >= @exit_began
          @final_scrapes += 1
          @scraped.broadcast
        end
      end
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
