package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/workersd/workersd/internal/strictjson"
)

// Handler serves the agent's API:
//
//	POST   /v1/workers        register {"job","port"|"address","pid","labels","scheme","metrics_path"}
//	GET    /v1/workers        list
//	GET    /v1/workers/{id}   one, by pid or ID
//	DELETE /v1/workers/{id}   remove at once, by pid or ID: 200 "deregistered" when
//	                          etcd confirmed, 202 "removal_pending" while the agent tries
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
		a.m.APIRequests.WithLabelValues(method, strconv.Itoa(sw.status)).Inc()
	})
}

// requireCaller refuses requests that arrive without a known caller: on
// the Unix socket, peer credentials that could not be read; elsewhere, a
// listener not guarded by TokenAuth.
func (a *Agent) requireCaller(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Context().Value(callerKey{}).(Caller); !ok && r.URL.Path != "/-/healthy" {
			a.m.Refusals.WithLabelValues("unauthenticated").Inc()
			writeErr(w, apiErr(http.StatusUnauthorized, "", "unknown caller: use the Unix socket, or the TCP API with its token"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Defaults of ServerConfig. A request is a few hundred bytes on a local
// socket, read in microseconds; the longest answer waits for etcd (a
// registration up to RegisterWait, a removal up to RemoveWait).
const (
	DefaultReadTimeout  = 10 * time.Second
	DefaultWriteTimeout = 30 * time.Second
	DefaultIdleTimeout  = 30 * time.Second
)

// ServerConfig configures an API server (NewServerWith). What one caller
// may hold open is bounded by a ConnLimiter on the listener; these bound
// how long.
type ServerConfig struct {
	// ReadTimeout bounds the reading of one request, headers and body,
	// from its first byte (a body sent a byte at a time ends there).
	// Optional, defaults to DefaultReadTimeout.
	ReadTimeout time.Duration
	// WriteTimeout bounds a request from the end of its headers to the
	// end of its answer, the handler's work included: keep it above the
	// longest wait for etcd. Optional, defaults to DefaultWriteTimeout.
	WriteTimeout time.Duration
	// IdleTimeout bounds how long a keep-alive connection waits for its
	// next request. Optional, defaults to DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Token, when set, makes it the TCP API's server: every request must
	// carry "Authorization: Bearer <Token>" (TokenAuth). Empty: the Unix
	// socket's, whose peer credentials identify callers (ConnContext).
	Token string
}

// NewServer returns the API's HTTP server for the Unix socket with the
// default ServerConfig: each connection's peer credentials (SO_PEERCRED)
// decide what its requests may do.
func (a *Agent) NewServer() *http.Server { return a.NewServerWith(ServerConfig{}) }

// NewServerWith returns an API server: for the Unix socket, or for TCP
// with cfg.Token. Serve it on a listener wrapped by a ConnLimiter. Its
// own errors (accept failures) go to the agent's logger.
func (a *Agent) NewServerWith(cfg ServerConfig) *http.Server {
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	srv := &http.Server{
		Handler:      a.Handler(),
		ConnContext:  ConnContext,
		ReadTimeout:  cfg.ReadTimeout, // and the headers' (ReadHeaderTimeout unset)
		WriteTimeout: cfg.WriteTimeout,
		IdleTimeout:  cfg.IdleTimeout,
		ErrorLog:     a.log.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Warn}),
	}
	if cfg.Token != "" {
		srv.Handler = TokenAuth(cfg.Token, srv.Handler)
		srv.ConnContext = nil // TCP has no peer credentials
	}
	return srv
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
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeErr(w, apiErr(http.StatusRequestEntityTooLarge, "", "request body larger than %d bytes", MaxBodySize))
			return
		}
		writeErr(w, apiErr(http.StatusBadRequest, "", "reading the request: %v", err))
		return
	}
	// Strictly: encoding/json alone would take "Address" for "address" and
	// the last of two "address" keys, which a reviewer of the request (or
	// a proxy's check) would not see.
	var req Request
	if err := strictjson.Unmarshal(body, &req); err != nil {
		field := ""
		var se *strictjson.Error
		if errors.As(err, &se) && !se.Unknown {
			field = se.Field
		}
		writeErr(w, apiErr(http.StatusBadRequest, field, "invalid JSON request: %v", err))
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
	status := http.StatusOK
	if wk.State == "removal_pending" {
		status = http.StatusAccepted // the agent goes on trying
	}
	writeJSON(w, status, wk)
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
