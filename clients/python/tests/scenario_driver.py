"""The Python client under internal/testing/clienttest's shared scenario: the
scenario drives it through the line protocol documented in
internal/testing/clienttest/scenario.go (commands on stdin, one JSON event per line
on stdout), identically for the three clients. Everything the Worker is
configured with comes from the environment, as in a real server's hook."""

import json
import os
import sys

from prometheus_client import Counter

import workersd
from workersd import agent


def emit(**event):
    print(json.dumps(event), flush=True)


def main():
    events = Counter("scenario_events", "Events the scenario counted.")
    try:
        worker = workersd.Worker()
    except ValueError as e:
        emit(event="config_error", error=str(e))
        return 2
    worker.start()
    emit(event="started", pid=os.getpid(), port=worker.endpoint.port, path=worker.endpoint.path)
    total = 0
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "inc":
            events.inc(int(cmd[1]))
            total += int(cmd[1])
            emit(event="inc", total=total)
        elif cmd[0] == "register":
            try:
                reg = agent.register(cmd[2], int(cmd[3]), path=cmd[1])
            except agent.AgentError as e:
                emit(event="agent_error", status=e.status, retryable=e.retryable, field=e.field, error=e.error)
            else:
                emit(event="registered", state=reg.get("state"), key=reg.get("key"))
        elif cmd[0] == "stop":
            worker.stop()
            emit(event="stopped")
        else:
            emit(event="unknown_command", error=line.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
