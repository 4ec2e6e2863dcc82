package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/etcdsd"
	"github.com/workersd/workersd/internal/procstatus"
)

// hugeRun is the measurement of sdwriter and etcd past the fleet table's
// size (issue 27: a million registrations): no Prometheus, which could not
// parse such outputs on this machine beside the rest.
type hugeRun struct {
	n, shards, rate        int
	window                 time.Duration
	populate               time.Duration
	etcdRSS, etcdDB, inUse float64 // MB
	list, list2000         time.Duration
	ready                  time.Duration
	rss, rssServed         float64 // sdwriter VmHWM after the sync, and after serving
	status, sd             time.Duration
	sdBytes                int
	restarts               int
	elapsed                time.Duration // of the churn, which may overrun window
	sdwCPU, etcdCPU        float64
	rssChurn               float64
}

// huge grows etcd to n registrations and measures it, then sdwriter with
// shards: initial sync, peak RSS, the status page and one shard's http_sd
// served, and CPU under rate restarts a second for window (restarted by
// parallel clients, as many hosts would).
func (b *bench) huge(ctx context.Context, bin string, n, shards, rate int, window time.Duration) (*hugeRun, error) {
	h := &hugeRun{n: n, shards: shards, rate: rate, window: window}
	t0 := time.Now()
	if err := b.populate(ctx, n-len(b.live)); err != nil {
		return nil, err
	}
	h.populate = time.Since(t0)
	logf("%d registrations in etcd after %s", len(b.live), h.populate.Round(time.Millisecond))
	rss, _ := procstatus.Bytes(b.etcd.Process.Pid, "VmRSS")
	h.etcdRSS = float64(rss) / 1e6
	st, err := b.cli.Status(ctx, b.cli.Endpoints()[0])
	if err != nil {
		return nil, err
	}
	h.etcdDB, h.inUse = float64(st.DbSize)/1e6, float64(st.DbSizeInUse)/1e6
	// A complete listing at one revision, in pages of 2000 (as sdwriter
	// read it before issue 27) and in etcdsd.MaxPages pages (as it does).
	list := func(pages int64) (time.Duration, error) {
		t0 := time.Now()
		key, end, limit := prefix, clientv3.GetPrefixRangeEnd(prefix), int64(2000)
		var rev int64
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(limit)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := b.cli.Get(ctx, key, opts...)
			if err != nil {
				return 0, err
			}
			if rev == 0 && pages > 0 {
				limit = max(limit, (resp.Count+pages-1)/pages)
			}
			rev = resp.Header.Revision
			if !resp.More || len(resp.Kvs) == 0 {
				return time.Since(t0), nil
			}
			key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	if h.list2000, err = list(0); err != nil {
		return nil, err
	}
	if h.list, err = list(etcdsd.MaxPages); err != nil {
		return nil, err
	}
	logf("etcd: RSS %.0f MB, database %.0f MB (%.0f MB in use), a listing in pages of 2000: %s, in %d pages: %s", h.etcdRSS, h.etcdDB, h.inUse, h.list2000.Round(time.Millisecond), etcdsd.MaxPages, h.list.Round(time.Millisecond))

	dir := filepath.Join(b.tmp, "huge")
	sdw, ready, rssMB, _, err := b.startSdwriter(ctx, bin, dir, shards, fmt.Sprintf("--output.shards=%d", shards))
	if err != nil {
		return nil, err
	}
	defer stopProc(sdw)
	h.ready, h.rss = ready, rssMB
	web := argValue(sdw.Args, "--web.listen-address=")
	if h.status, _, err = timeGet(web, "/api/v1/status?limit=1000"); err != nil {
		return nil, err
	}
	if h.sd, h.sdBytes, err = timeGet(web, "/sd?shard=0"); err != nil {
		return nil, err
	}
	hwm, _ := procstatus.Bytes(sdw.Process.Pid, "VmHWM")
	h.rssServed = float64(hwm) / 1e6
	logf("sdwriter, %d shards: synced in %s, peak RSS %.0f MB; status page %s, /sd?shard=0 (%.1f MiB) %s; peak RSS %.0f MB", shards, ready.Round(time.Millisecond), h.rss, h.status.Round(time.Millisecond), float64(h.sdBytes)/(1<<20), h.sd.Round(time.Millisecond), h.rssServed)

	// Restarts from parallel clients, each over its own share of the
	// registrations; key and value come from b under a lock.
	const clients = 16
	var mu sync.Mutex
	c0 := [2]float64{cpuSeconds(sdw.Process.Pid), cpuSeconds(b.etcd.Process.Pid)}
	start := time.Now()
	var wg sync.WaitGroup
	var firstErr error
	for c := range clients {
		wg.Go(func() {
			i := c
			for done := 0; time.Since(start) < window && ctx.Err() == nil; done++ {
				// Each client keeps its share of the pace.
				if due := time.Duration(float64(done*clients) / float64(rate) * float64(time.Second)); time.Since(start) < due {
					time.Sleep(due - time.Since(start))
				}
				mu.Lock()
				old := b.live[i]
				host := hostOf(old)
				k := b.key(host)
				v, _ := b.value(host)
				b.live[i] = k
				mu.Unlock()
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := b.cli.Delete(cctx, old)
				if err == nil {
					_, err = b.cli.Put(cctx, k, v)
				}
				cancel()
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				h.restarts++
				mu.Unlock()
				if err != nil {
					return
				}
				i = (i + clients) % len(b.live)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	h.elapsed = time.Since(start)
	elapsed := h.elapsed.Seconds()
	h.sdwCPU = (cpuSeconds(sdw.Process.Pid) - c0[0]) / elapsed
	h.etcdCPU = (cpuSeconds(b.etcd.Process.Pid) - c0[1]) / elapsed
	hwm, _ = procstatus.Bytes(sdw.Process.Pid, "VmHWM")
	h.rssChurn = float64(hwm) / 1e6
	logf("churn: %d restarts in %.0f s (%.0f a second); sdwriter %.3f cores, etcd %.3f cores; sdwriter peak RSS %.0f MB", h.restarts, elapsed, float64(h.restarts)/elapsed, h.sdwCPU, h.etcdCPU, h.rssChurn)
	return h, nil
}

// markdown is the paragraph docs/BENCHMARKS.md holds for h.
func (h *hugeRun) markdown() string {
	var s strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&s, format+"\n", args...) }
	p("")
	p("%d registrations (issue 27), the same etcd process, no Prometheus: `scripts/bench fleet -huge %d` (here with `-huge-shards %d -huge-rate %d -huge-seconds %.0f`).", h.n, h.n, h.shards, h.rate, h.window.Seconds())
	p("")
	p("| what | figure |")
	p("|---|---|")
	p("| etcd: RSS; database size (in use) | %.0f MB; %.0f MB (%.0f MB) |", h.etcdRSS, h.etcdDB, h.inUse)
	p("| etcd: a complete listing at one revision, in pages of 2000 / in %d pages (etcdsd.MaxPages) | %s / %s |", etcdsd.MaxPages, h.list2000.Round(time.Millisecond), h.list.Round(time.Millisecond))
	p("| sdwriter, --output.shards=%d: start to every file written; peak RSS | %s; %.0f MB |", h.shards, h.ready.Round(time.Millisecond), h.rss)
	p("| then the status page (`/api/v1/status?limit=1000`) and `/sd?shard=0` (%.1f MiB) served | %s and %s; peak RSS %.0f MB |", float64(h.sdBytes)/(1<<20), h.status.Round(time.Millisecond), h.sd.Round(time.Millisecond), h.rssServed)
	p("| churn: restarts a second asked, reached (%d clients, each a delete and a put) | %d, %.0f |", 16, h.rate, float64(h.restarts)/h.elapsed.Seconds())
	p("| CPU over the churn: sdwriter; etcd | %.3f; %.3f cores |", h.sdwCPU, h.etcdCPU)
	p("| sdwriter peak RSS after the churn | %.0f MB |", h.rssChurn)
	return s.String()
}

// timeGet GETs path from the web address web and reads the whole response:
// how long it took and its size.
func timeGet(web, path string) (time.Duration, int, error) {
	t := time.Now()
	resp, err := http.Get("http://" + web + path)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("%s: %s", path, resp.Status)
	}
	return time.Since(t), int(n), err
}
