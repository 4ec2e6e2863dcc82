package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Handler serves the agent's API:
//
//	POST   /v1/workers        register {"job","port"|"address","pid","labels","scheme","metrics_path"}
//	GET    /v1/workers        list
//	GET    /v1/workers/{id}   one, by pid or ID
//	DELETE /v1/workers/{id}   revoke at once, by pid or ID
//	GET    /-/healthy
//
// Errors are {"error": "...", "field": "..."} with a 4xx status (500 when /proc cannot be read, 503 when the agent is not running), and change
// nothing. Every request needs a known caller (see NewServer, TokenAuth):
// a caller changes only processes of its own user, unless trusted.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/workers", a.handleRegister)
	mux.HandleFunc("GET /v1/workers", a.handleList)
	mux.HandleFunc("GET /v1/workers/{id}", a.handleGet)
	mux.HandleFunc("DELETE /v1/workers/{id}", a.handleDelete)
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "OK")
	})
	return a.count(a.requireCaller(mux))
}

// count records every response's status in the API metric. Methods other
// than the API's count as "other": a client must not grow the series.
func (a *Agent) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		method := r.Method
		switch method {
		case http.MethodGet, http.MethodPost, http.MethodDelete:
		default:
			method = "other"
		}
		a.m.apiRequests.WithLabelValues(method, strconv.Itoa(sw.status)).Inc()
	})
}

// requireCaller refuses requests that arrive without a known caller: on
// the Unix socket, peer credentials that could not be read; elsewhere, a
// listener not guarded by TokenAuth.
func (a *Agent) requireCaller(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Context().Value(callerKey{}).(Caller); !ok && r.URL.Path != "/-/healthy" {
			a.m.refusals.WithLabelValues("unauthenticated").Inc()
			writeErr(w, apiErr(http.StatusUnauthorized, "", "unknown caller: use the Unix socket, or the TCP API with its token"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// NewServer returns the API's HTTP server for the Unix socket: each
// connection's peer credentials (SO_PEERCRED) decide what its requests
// may do. For TCP, serve TokenAuth(token, a.Handler()) instead.
func (a *Agent) NewServer() *http.Server {
	return &http.Server{Handler: a.Handler(), ConnContext: ConnContext, ReadHeaderTimeout: 10 * time.Second}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (a *Agent) handleRegister(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodySize)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	var req Request
	if err := dec.Decode(&req); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeErr(w, apiErr(http.StatusRequestEntityTooLarge, "", "request body larger than %d bytes", MaxBodySize))
			return
		}
		writeErr(w, apiErr(http.StatusBadRequest, "", "invalid JSON request: %v", err))
		return
	}
	if dec.More() {
		writeErr(w, apiErr(http.StatusBadRequest, "", "invalid JSON request: data after the object"))
		return
	}
	wk, created, err := a.Register(r.Context(), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
		w.Header().Set("Location", "/v1/workers/"+wk.ID)
	}
	writeJSON(w, status, wk)
}

func (a *Agent) handleList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"workers": a.List()})
}

func (a *Agent) handleGet(w http.ResponseWriter, r *http.Request) {
	wk, ok := a.Get(r.PathValue("id"))
	if !ok {
		writeErr(w, apiErr(http.StatusNotFound, "pid", "no worker %q is registered", r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, wk)
}

func (a *Agent) handleDelete(w http.ResponseWriter, r *http.Request) {
	wk, err := a.Deregister(r.Context(), r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, wk)
}

func writeErr(w http.ResponseWriter, err error) {
	var ae *Error
	if !errors.As(err, &ae) {
		ae = apiErr(http.StatusInternalServerError, "", "%v", err)
	}
	writeJSON(w, ae.Status, ae)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
