# frozen_string_literal: true

require "io/wait"
require "json"
require "socket"

module Workersd
  # The agent refused a request or could not be reached at all
  # (docs/CLIENTS.md).
  class AgentError < StandardError
    # status: the HTTP status, nil when the agent could not be reached.
    # error: the agent's own text (its answer's "error"), or why it could
    # not be reached (naming the socket). field: the request field the
    # agent named, nil when none.
    attr_reader :status, :field, :error

    def initialize(status, error, field = nil)
      @status = status
      @field = field.nil? || field.empty? ? nil : field
      @error = error
      super(status ? "workersd agent answered #{status}: #{detail}" : "workersd agent unreachable: #{detail}")
    end

    # Worth trying again later: the agent is down, restarting or stopping
    # (no answer, or 503). Any other error is the request's fault.
    def retryable?
      status.nil? || status == 503
    end

    # Deprecated: the name of retryable? before docs/CLIENTS.md.
    alias transient? retryable?

    # Deprecated (use error and field): the agent's text, prefixed with the
    # field it names unless the text names it already.
    def detail
      @field && !@error.include?(@field) ? "#{@field}: #{@error}" : @error
    end
  end

  # Client of the workersd agent's API: JSON over HTTP on its Unix socket
  # (docs/AGENT.md in the workersd repository).
  class Agent
    DEFAULT_SOCKET = "/run/workersd/agent.sock"

    attr_reader :socket_path

    def initialize(socket_path: ENV.fetch("WORKERSD_AGENT_SOCKET", DEFAULT_SOCKET), timeout: 5.0)
      @socket_path = socket_path
      @timeout = timeout
    end

    # Registers process pid as a target of job serving its metrics on port
    # (at metrics_path, by default /metrics).
    # Returns the agent's view of it: "id", "state" ("registered", or
    # "pending" while etcd is unreachable), "slot", "key". The same request
    # again is idempotent, so it is safe to retry.
    def register(job:, port:, pid: Process.pid, labels: {}, scheme: nil, metrics_path: nil)
      body = { job: job, port: port, pid: pid }
      body[:labels] = labels.to_h { |k, v| [k.to_s, v.to_s] } unless labels.nil? || labels.empty?
      body[:scheme] = scheme if scheme
      body[:metrics_path] = metrics_path if metrics_path
      request("POST", "/v1/workers", body)
    end

    # Revokes pid's registration at once: its target leaves Prometheus.
    def deregister(pid = Process.pid)
      request("DELETE", "/v1/workers/#{Integer(pid)}")
    end

    # Every registration the agent holds.
    def workers
      request("GET", "/v1/workers").fetch("workers")
    end

    # Sends one request and returns the decoded JSON answer; raises
    # AgentError on an error status or when the agent cannot be reached.
    def request(method, path, body = nil)
      payload = body.nil? ? "" : JSON.generate(body)
      status, data = exchange(format_request(method, path, payload))
      answer = parse(status, data)
      raise AgentError.new(status, answer["error"] || data, answer["field"]) if status >= 400

      answer
    end

    private

    # HTTP/1.0: the agent answers with the whole body and closes, never
    # chunked, so reading to the end is the whole answer.
    def format_request(method, path, payload)
      head = "#{method} #{path} HTTP/1.0\r\nHost: workersd-agent\r\n"
      head += "Content-Type: application/json\r\n" unless payload.empty?
      "#{head}Content-Length: #{payload.bytesize}\r\n\r\n#{payload}"
    end

    def exchange(req)
      response = UNIXSocket.open(@socket_path) do |sock|
        sock.write(req)
        read_all(sock)
      end
      head, data = response.split("\r\n\r\n", 2)
      status = head.to_s[%r{\AHTTP/\d\.\d (\d{3})[ \r\n]}, 1]
      raise AgentError.new(nil, "malformed answer from #{@socket_path}: #{response[0, 80].inspect}") unless status

      [Integer(status, 10), data.to_s]
    rescue SystemCallError, IOError => e
      raise AgentError.new(nil, "#{@socket_path}: #{e.message}")
    end

    def read_all(sock)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + @timeout
      out = +""
      loop do
        chunk = sock.read_nonblock(16_384, exception: false)
        case chunk
        when nil then return out
        when :wait_readable
          left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
          raise Errno::ETIMEDOUT, "no answer within #{@timeout}s" if left <= 0 || !sock.wait_readable(left)
        else out << chunk
        end
      end
    end

    def parse(status, data)
      return {} if data.empty?

      JSON.parse(data)
    rescue JSON::ParserError
      raise AgentError.new(status, "answer is not JSON: #{data[0, 200].inspect}") if status < 400

      { "error" => data.strip }
    end
  end
end
