package agent

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// Caller is who sent an API request. On the Unix socket it comes from the
// connection's peer credentials (SO_PEERCRED), which the kernel vouches
// for; a caller may register, change and remove only processes of its own
// user. Trusted callers (root on the socket, a TCP client holding the API
// token) act for any user.
type Caller struct {
	UID     int
	PID     int
	Trusted bool
	// PIDUnseen: the caller's process is in no PID namespace the agent
	// can see (SO_PEERCRED carried pid 0), so the pids it names are not
	// the agent's: a sidecar without shareProcessNamespace, an agent in a
	// container of its own. Its registrations are refused (trust.go).
	PIDUnseen bool
}

func (c Caller) String() string {
	if c.Trusted && c.PID == 0 {
		return "a trusted caller"
	}
	return fmt.Sprintf("uid %d (pid %d)", c.UID, c.PID)
}

// mayActFor says whether c may register or remove a process of uid.
func (c Caller) mayActFor(uid int) bool { return c.Trusted || c.UID == uid }

type callerKey struct{}

// WithCaller returns ctx carrying c, for Register and Deregister.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// callerFrom returns the request's caller. A call without one comes from
// the agent's own process (Go code calling Register), which is trusted;
// the HTTP handler never lets a request through without one.
func callerFrom(ctx context.Context) Caller {
	if c, ok := ctx.Value(callerKey{}).(Caller); ok {
		return c
	}
	return Caller{Trusted: true}
}

// ConnContext is for http.Server.ConnContext on the Unix socket: it puts
// the peer credentials of each connection into its requests' context (as
// a ConnLimiter's listener read them at accept, or read here).
// Connections whose credentials cannot be read get none, and Handler
// refuses their requests.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitedConn); ok {
		if lc.caller == nil {
			return ctx
		}
		return WithCaller(ctx, *lc.caller)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	caller, err := peerCredentials(uc)
	if err != nil {
		return ctx
	}
	return WithCaller(ctx, caller)
}

// TokenAuth guards the API on TCP, where no peer credentials exist: a
// request must carry "Authorization: Bearer <token>", and must not look
// like a browser's (an Origin header, a Host other than an IP address or
// localhost, which DNS rebinding would give, or a POST that is not
// application/json, which a form can send without a preflight). Such a
// caller is trusted.
func TokenAuth(token string, h http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Origin") != "" {
			writeErr(w, apiErr(http.StatusForbidden, "", "requests from browsers (with an Origin header) are refused"))
			return
		}
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if host != "localhost" && net.ParseIP(strings.Trim(host, "[]")) == nil {
			writeErr(w, apiErr(http.StatusForbidden, "", "Host %q is not an IP address or localhost", r.Host))
			return
		}
		if r.Method == http.MethodPost && !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			writeErr(w, apiErr(http.StatusUnsupportedMediaType, "", "Content-Type must be application/json"))
			return
		}
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="workersd-agent"`)
			writeErr(w, apiErr(http.StatusUnauthorized, "", "a valid API token is required (Authorization: Bearer <token>)"))
			return
		}
		h.ServeHTTP(w, r.WithContext(WithCaller(r.Context(), Caller{Trusted: true})))
	})
}
