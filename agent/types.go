package agent

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/workersd/workersd/registrar"
)

// Request registers one worker process.
type Request struct {
	// Job is the Prometheus job.
	Job string `json:"job"`
	// Port the worker serves metrics on; the address registered is
	// AdvertiseHost:Port. Give either Port or Address.
	Port int `json:"port,omitempty"`
	// Address (host:port) to register as is.
	Address string `json:"address,omitempty"`
	// PID of the worker process: the registration lives as long as it.
	PID         int               `json:"pid"`
	Labels      map[string]string `json:"labels,omitempty"`
	Scheme      string            `json:"scheme,omitempty"`
	MetricsPath string            `json:"metrics_path,omitempty"`
}

// workerID is a Worker's ID. Made here only: the ID the agent gives a
// worker at its registration and the one it rebuilds from etcd when its
// state file is unusable must be the same string.
func workerID(pid int, startTicks uint64) string {
	return strconv.Itoa(pid) + "-" + strconv.FormatUint(startTicks, 10)
}

// Worker is the API's view of one registration.
type Worker struct {
	// ID is "<pid>-<start ticks>": unlike the pid alone it never names a
	// later process that reuses the pid.
	ID          string            `json:"id"`
	PID         int               `json:"pid"`
	Job         string            `json:"job"`
	Address     string            `json:"address"`
	Scheme      string            `json:"scheme,omitempty"`
	MetricsPath string            `json:"metrics_path,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	StartedAt   time.Time         `json:"started_at"`
	// State is "registered" while the key is in etcd, "pending" before the
	// first claim and while etcd is unreachable (the agent keeps trying).
	// A DELETE answers "deregistered" once the key is gone from etcd, or
	// "removal_pending" while the agent keeps trying to remove it.
	State string `json:"state"`
	// Key and Slot of the registration; empty and -1 until the first claim.
	Key   string `json:"key,omitempty"`
	Slot  int    `json:"slot"`
	Lease string `json:"lease,omitempty"`
	// Error is why the registration is pending, if known.
	Error string `json:"error,omitempty"`
	// Watch is how the process is watched: "pidfd" or "poll".
	Watch string `json:"watch"`
}

// Error is an API error: an HTTP status, the request field at fault (if
// any) and a message for people.
type Error struct {
	Status int    `json:"-"`
	Field  string `json:"field,omitempty"`
	Msg    string `json:"error"`
}

func (e *Error) Error() string { return e.Msg }

func apiErr(status int, field, format string, args ...any) *Error {
	return &Error{Status: status, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// fromFieldErr turns a validation error into a 400 naming the field.
func fromFieldErr(err error) *Error {
	var fe *registrar.FieldError
	if errors.As(err, &fe) {
		return apiErr(http.StatusBadRequest, fe.Field, "%s", fe.Error())
	}
	return apiErr(http.StatusBadRequest, "", "%v", err)
}
