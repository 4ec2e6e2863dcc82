package main

import "errors"

// errPIDNamespace is why an agent that is pid 1 refuses to start.
var errPIDNamespace = errors.New("the agent is pid 1 of its PID namespace, so it can see no worker: it checks each caller's pid and watches it to remove the registration at the worker's exit. " +
	"In Kubernetes, set shareProcessNamespace: true in the pod's spec and run the agent as a native sidecar (docs/KUBERNETES.md); " +
	"with Docker or Podman, start it with --pid=container:<the application's container>")

// checkPIDNamespace refuses an agent that is pid 1. Whoever is pid 1 has a
// PID namespace of its own, which no worker shares: a container started
// alone, or a pod's sidecar without shareProcessNamespace (with it, the
// pod's pause container is pid 1). Every registration would then fail on
// the caller's pid, which the kernel reports as 0 across namespaces; say
// what to set instead.
func checkPIDNamespace(pid int) error {
	if pid == 1 {
		return errPIDNamespace
	}
	return nil
}
