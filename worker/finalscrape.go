package worker

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// The final scrape is the first scrape of the registered path that began
// after Stop was called and whose whole answer the scraper received before
// its scrape timed out. Handing the answer to the kernel is not enough: a
// scraper cut off from the worker (a link cut or slowed just then) times
// out, stores nothing, and the worker, had it counted that scrape, would
// deregister with its last increments unseen (docs/SOAK.md, "a final scrape
// that never arrived"). So while stopping, a scrape of the registered path
// is answered with a Content-Length (the whole answer buffered), flushed,
// and counts only once the kernel reports every byte of it acknowledged by
// the peer (SIOCOUTQ is 0, the connection still established) before the request's start plus the scrape
// timeout Prometheus sends (X-Prometheus-Scrape-Timeout-Seconds) less a
// margin. A scrape that does not make it is not final; Stop waits on for
// the next one, within its final-scrape timeout.
//
// Ordinary scrapes pay nothing for this beyond one context value per
// connection. Where the kernel does not report a socket's unacknowledged
// bytes (systems other than Linux, or a connection that is no socket), a
// scrape counts once its answer was written, as it did before. Over
// HTTP/2 (TLS with http2 enabled in the web config) the end of the stream
// is sent after the handler returns, so a stream cut right then can still
// count; Prometheus scrapes over HTTP/1.1 unless enable_http2 is set.

type connKey struct{}

// withConn is the server's ConnContext: it keeps the connection for the
// final scrape.
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// socketOf returns the connection a request came on, under TLS if any.
func socketOf(r *http.Request) net.Conn {
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	for c != nil {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	return c
}

// defaultScrapeTimeout is the bound on a final scrape whose request names
// no timeout: Prometheus' default scrape timeout.
const defaultScrapeTimeout = 10 * time.Second

// scrapeDeadline is when a scrape begun at began must have been received
// whole: its scrape timeout (at most the final-scrape timeout) less a
// tenth of it, at most half a second, for the request's way here and the
// answer's last ACK.
func (w *Worker) scrapeDeadline(r *http.Request, began time.Time) time.Time {
	timeout := defaultScrapeTimeout
	if v, err := strconv.ParseFloat(r.Header.Get("X-Prometheus-Scrape-Timeout-Seconds"), 64); err == nil && v > 0 && v < 1e6 {
		timeout = time.Duration(v * float64(time.Second))
	}
	if f := *w.cfg.FinalScrapeTimeout; f > 0 && timeout > f {
		timeout = f
	}
	return began.Add(timeout - min(timeout/10, 500*time.Millisecond))
}

// finalScrapeAware marks the final scrape (see above) once it was
// delivered.
func (w *Worker) finalScrapeAware(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		select {
		case <-w.stopping:
		default:
			h.ServeHTTP(rw, r)
			return
		}
		began := time.Now()
		conn := socketOf(r)
		if conn == nil {
			h.ServeHTTP(rw, r)
			w.finalOnce.Do(func() { close(w.finalScrape) })
			return
		}
		if _, ok := unackedBytes(conn); !ok {
			h.ServeHTTP(rw, r)
			w.finalOnce.Do(func() { close(w.finalScrape) })
			return
		}
		if err := w.deliver(rw, r, h, conn, w.scrapeDeadline(r, began)); err != nil {
			w.log.Debug("a scrape after stop was not delivered in time; it is not the final scrape", "remote", r.RemoteAddr, "error", err)
			return
		}
		w.finalOnce.Do(func() { close(w.finalScrape) })
	})
}

// deliver serves h's answer with a Content-Length and returns once conn's
// peer has acknowledged all of it, or an error when that did not happen
// by deadline.
func (w *Worker) deliver(rw http.ResponseWriter, r *http.Request, h http.Handler, conn net.Conn, deadline time.Time) error {
	rec := &recorder{header: rw.Header(), code: http.StatusOK}
	h.ServeHTTP(rec, r)
	// A scraper that reads nothing must not hold the write past the
	// deadline; the connection is of no use after such a timeout.
	rc := http.NewResponseController(rw)
	if err := rc.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("write deadline: %w", err)
	}
	rw.Header().Set("Content-Length", strconv.Itoa(rec.body.Len()))
	rw.WriteHeader(rec.code)
	if _, err := rw.Write(rec.body.Bytes()); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := rc.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	_ = rc.SetWriteDeadline(time.Time{}) // written: the next request's is its own
	if rec.code != http.StatusOK {
		return fmt.Errorf("status %d", rec.code)
	}
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		n, ok := unackedBytes(conn)
		if !ok || n < 0 {
			return fmt.Errorf("the connection ended with the answer unacknowledged")
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d bytes unacknowledged at the scrape's deadline", n)
		}
		select {
		case <-tick.C:
		case <-r.Context().Done(): // the scraper went away
			return fmt.Errorf("%d bytes unacknowledged when the connection ended", n)
		}
	}
}

// recorder buffers an answer, its headers going straight to the real
// ResponseWriter's.
type recorder struct {
	header http.Header
	code   int
	wrote  bool
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.code, r.wrote = code, true
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.body.Write(b)
}
