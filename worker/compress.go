package worker

import (
	"compress/gzip"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// gzipFast compresses /metrics with gzip.BestSpeed instead of promhttp's
// default level: on a scrape of a few hundred series that is several times
// less CPU for an output only a little larger, and a worker's CPU belongs to
// its work (see docs/BENCHMARKS.md, /metrics latency).
func gzipFast(h http.Handler) http.Handler {
	pool := sync.Pool{New: func() any {
		w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed) // a valid level never fails
		return w
	}}
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
			h.ServeHTTP(rw, r)
			return
		}
		gz := pool.Get().(*gzip.Writer)
		defer pool.Put(gz)
		gz.Reset(rw)
		rw.Header().Set("Content-Encoding", "gzip")
		rw.Header().Add("Vary", "Accept-Encoding")
		h.ServeHTTP(&gzipWriter{ResponseWriter: rw, gz: gz}, r)
		gz.Close()
	})
}

type gzipWriter struct {
	http.ResponseWriter
	gz *gzip.Writer
}

func (w *gzipWriter) WriteHeader(code int) {
	w.Header().Del("Content-Length") // the length of the uncompressed body
	w.ResponseWriter.WriteHeader(code)
}

func (w *gzipWriter) Write(b []byte) (int, error) { return w.gz.Write(b) }

// acceptsGzip reports whether an Accept-Encoding header allows gzip.
func acceptsGzip(header string) bool {
	for part := range strings.SplitSeq(header, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		q, found := strings.CutPrefix(strings.TrimSpace(params), "q=")
		if !found {
			return true
		}
		v, err := strconv.ParseFloat(q, 64)
		return err == nil && v > 0
	}
	return false
}
