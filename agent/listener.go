package agent

import (
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Defaults of LimitConfig. A worker opens one connection to register and
// one to deregister, each for milliseconds (up to RegisterWait when etcd
// is slow): a pre-fork server of 64 workers booting at once holds 64. One
// caller's 256 is four times that; all callers' 1024 stay far below the
// descriptor limit Go raises itself to (the hard limit: 524288 under
// systemd) and leave room for a pidfd per worker.
const (
	DefaultMaxConnsPerCaller = 256
	DefaultMaxConns          = 1024
)

// connRefusalReasons are the values of
// workersd_agent_connections_refused_total's reason.
var connRefusalReasons = []string{"caller_limit", "total_limit"}

// LimitConfig configures a ConnLimiter.
type LimitConfig struct {
	// MaxConnsPerCaller bounds the open connections of one caller: of one
	// uid on the Unix socket (its peer credentials, read at accept), of
	// one remote IP address on TCP. Optional, defaults to
	// DefaultMaxConnsPerCaller.
	MaxConnsPerCaller int
	// MaxConns bounds the open connections of all callers together, on
	// every listener of the limiter. Optional, defaults to
	// DefaultMaxConns.
	MaxConns int
	// Metrics receive the limiter's counts (Connections,
	// ConnectionsRefused). Optional, defaults to metrics registered nowhere.
	Metrics *Metrics
	// Logger; nil discards.
	Logger hclog.Logger
}

// ConnLimiter bounds the open connections of the API's listeners, per
// caller and in all, at accept time: a connection over its caller's limit
// (or the total) is closed at once, counted, and the listener goes on
// accepting. So a user who holds connections open (idle keep-alives,
// request bodies sent a byte at a time) exhausts its own share, never the
// agent's descriptors, and the agent keeps answering the workers of other
// users. The server's timeouts (ServerConfig) then close what it holds.
type ConnLimiter struct {
	perCaller, max int
	log            hclog.Logger
	m              *Metrics

	mu       sync.Mutex
	total    int
	byCaller map[string]int
	lastWarn time.Time
}

// NewConnLimiter returns a limiter; wrap each API listener with Listener.
func NewConnLimiter(cfg LimitConfig) (*ConnLimiter, error) {
	if cfg.MaxConnsPerCaller <= 0 {
		cfg.MaxConnsPerCaller = DefaultMaxConnsPerCaller
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	l := &ConnLimiter{
		perCaller: cfg.MaxConnsPerCaller,
		max:       cfg.MaxConns,
		log:       cfg.Logger,
		byCaller:  map[string]int{},
		m:         cfg.Metrics,
	}
	if l.m == nil {
		l.m = NewMetrics(nil)
	}
	return l, nil
}

// Listener wraps inner so that its connections count against the limits.
// On a Unix socket it reads each connection's peer credentials once, at
// accept, for the limit and for ConnContext.
func (l *ConnLimiter) Listener(inner net.Listener) net.Listener {
	return &limitedListener{Listener: inner, lim: l}
}

type limitedListener struct {
	net.Listener
	lim *ConnLimiter
}

// Accept returns the next connection within the limits; those beyond are
// closed here without waiting for anything.
func (ll *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key, caller := identify(c)
		if reason := ll.lim.acquire(key); reason != "" {
			// Counted before the close: whoever sees the connection closed
			// sees it counted too.
			ll.lim.refuse(key, reason)
			c.Close()
			continue
		}
		return &limitedConn{Conn: c, lim: ll.lim, key: key, caller: caller}, nil
	}
}

// identify names the bucket c counts in: "uid <n>" on a Unix socket, "ip
// <address>" on TCP, "unknown" when its peer cannot be told. caller is the
// peer credentials, when read.
func identify(c net.Conn) (key string, caller *Caller) {
	switch c := c.(type) {
	case *net.UnixConn:
		cr, err := peerCredentials(c)
		if err != nil {
			return "unknown", nil
		}
		return "uid " + strconv.Itoa(cr.UID), &cr
	case *net.TCPConn:
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			return "ip " + a.IP.String(), nil
		}
	}
	return "unknown", nil
}

// acquire takes a place for key, or says why there is none.
func (l *ConnLimiter) acquire(key string) (refused string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.byCaller[key] >= l.perCaller:
		return "caller_limit"
	case l.total >= l.max:
		return "total_limit"
	}
	l.byCaller[key]++
	l.total++
	l.m.Connections.Inc()
	return ""
}

func (l *ConnLimiter) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byCaller[key]--; l.byCaller[key] <= 0 {
		delete(l.byCaller, key)
	}
	l.total--
	l.m.Connections.Dec()
}

// refuse counts a connection closed at accept and warns, at most every
// 10 s: one caller holding its limit must not flood the log either.
func (l *ConnLimiter) refuse(key, reason string) {
	l.m.ConnectionsRefused.WithLabelValues(reason).Inc()
	l.mu.Lock()
	warn := time.Since(l.lastWarn) >= 10*time.Second
	if warn {
		l.lastWarn = time.Now()
	}
	l.mu.Unlock()
	if warn {
		l.log.Warn("API connection closed at accept: limit reached (more are counted in workersd_agent_connections_refused_total, not logged for 10s)",
			"caller", key, "reason", reason, "per_caller", l.perCaller, "total", l.max)
	}
}

// limitedConn gives its place back when closed.
type limitedConn struct {
	net.Conn
	lim    *ConnLimiter
	key    string
	caller *Caller
	once   sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.lim.release(c.key) })
	return err
}

// CloseWrite lets net/http half-close a connection it ends after an
// unread request body, as it does on a bare connection.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
