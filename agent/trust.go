package agent

// Trust: what a request must prove before the agent registers anything,
// whoever sends it (docs/AGENT.md, "Who may register what").

import (
	"context"
	"errors"
	"net/http"

	"github.com/workersd/workersd/registrar"
)

// admitted is what the checks of a request established.
type admitted struct {
	value registrar.Value // to register, StartedAt the process's start
	ticks uint64          // the process's start, in clock ticks since boot
	uid   int             // the process's owner
}

// admit checks a request against the process it names: its value is
// valid, the pid is a live process that can be a worker, and the caller
// may act for that process's owner.
func (a *Agent) admit(ctx context.Context, req Request) (admitted, error) {
	v, err := a.value(req)
	if err != nil {
		return admitted{}, err
	}
	if err := callerFrom(ctx).samePIDNamespace(req.PID); err != nil {
		return admitted{}, err
	}
	notRunning := apiErr(http.StatusUnprocessableEntity, "pid", "pid %d is not a running process", req.PID)
	ticks, err := processStartTicks(req.PID)
	if errors.Is(err, errNotAlive) {
		return admitted{}, notRunning
	}
	if err != nil {
		return admitted{}, apiErr(http.StatusInternalServerError, "pid", "%v", err)
	}
	uid, err := processOwner(req.PID)
	var notWorker errNotWorker
	switch {
	case errors.As(err, &notWorker):
		return admitted{}, apiErr(http.StatusUnprocessableEntity, "pid", "pid %d cannot be a worker: %v", req.PID, err)
	case errors.Is(err, errNotAlive):
		return admitted{}, notRunning
	case err != nil:
		return admitted{}, apiErr(http.StatusInternalServerError, "pid", "%v", err)
	}
	caller := callerFrom(ctx)
	if !caller.mayActFor(uid) {
		a.m.Refusals.WithLabelValues("foreign_process").Inc()
		return admitted{}, apiErr(http.StatusForbidden, "pid", "pid %d belongs to uid %d; %s may register only its own processes", req.PID, uid, caller)
	}
	if v.StartedAt, err = processStartTime(ticks); err != nil {
		return admitted{}, apiErr(http.StatusInternalServerError, "", "%v", err)
	}
	return admitted{value: v, ticks: ticks, uid: uid}, nil
}

// errNotWorker is why a live process cannot be a worker.
type errNotWorker string

func (e errNotWorker) Error() string { return string(e) }

// samePIDNamespace refuses a caller whose pids are not the agent's: pid,
// looked up in the agent's /proc, would name another process or none.
func (c Caller) samePIDNamespace(pid int) *Error {
	if !c.PIDUnseen {
		return nil
	}
	return apiErr(http.StatusUnprocessableEntity, "pid",
		"the caller is in a PID namespace the agent cannot see (its peer credentials carry pid 0), so pid %d is not a pid of the agent's: "+
			"run the agent in the workers' PID namespace (Kubernetes: shareProcessNamespace: true, the agent as a sidecar; "+
			"Docker or Podman: --pid=container:<the application's container>; docs/KUBERNETES.md)", pid)
}
