//go:build linux

// Package rubytest is what the Ruby examples' end-to-end tests share:
// finding Ruby libraries from Debian's packages, and the client in this
// tree.
package rubytest

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/servertest"
)

// RequireLib checks that ruby can require lib (a gem from a Debian
// package). Missing, it skips the test, but fails it in CI (CI=true),
// where scripts/test must have installed it; hint says how to get it.
func RequireLib(t testing.TB, lib, hint string) {
	t.Helper()
	ruby, err := exec.LookPath("ruby")
	if err == nil {
		var out []byte
		out, err = exec.Command(ruby, "-e", "require "+quote(lib)).CombinedOutput()
		if err != nil {
			err = &libError{lib: lib, out: string(out)}
		}
	}
	if err == nil {
		return
	}
	msg := "ruby cannot load " + lib + " (" + hint + "): " + err.Error()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

type libError struct{ lib, out string }

func (e *libError) Error() string { return e.out }

func quote(s string) string { return "'" + s + "'" }

// ClientLib is the Ruby client's lib directory in this tree, for RUBYLIB:
// the tests run it even where a workersd gem is installed.
func ClientLib(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	lib, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", "..", "..", "clients", "ruby", "lib"))
	if err != nil {
		t.Fatal(err)
	}
	return lib
}

// Driver sends requests at a steady pace, each on a new connection, until
// stopped; one in five asks for a missing page (a 404, the per-status
// counter's low-rate series). The truth is what the server answered.
type Driver struct {
	t        *testing.T
	done     chan struct{}
	halt     sync.Once
	wg       sync.WaitGroup
	mu       sync.Mutex
	ok, nf   int
	failed   []string
	unwanted error
}

func StartDriver(t *testing.T, bind string, every time.Duration) *Driver {
	d := &Driver{t: t, done: make(chan struct{})}
	// A test that fails before stop leaves no requests behind.
	t.Cleanup(d.end)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	d.wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-d.done:
				return
			case <-tick.C:
			}
			path := "/"
			if i%5 == 4 {
				path = "/missing"
			}
			d.wg.Go(func() { d.get(client, "http://"+bind+path) })
		}
	})
	return d
}

func (d *Driver) get(client *http.Client, url string) {
	resp, err := client.Get(url)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case err != nil:
		d.failed = append(d.failed, fmt.Sprintf("GET %s: %v", url, err))
	case resp.StatusCode == http.StatusOK:
		d.ok++
	case resp.StatusCode == http.StatusNotFound:
		d.nf++
	default:
		d.unwanted = errors.Join(d.unwanted, fmt.Errorf("GET %s: status %s", url, resp.Status))
	}
}

// Answered is the number of requests answered so far.
func (d *Driver) Answered() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ok + d.nf
}

// end stops sending and waits for the answers to the requests in flight.
func (d *Driver) end() {
	d.halt.Do(func() { close(d.done) })
	d.wg.Wait()
}

// Stop ends the requests and returns what Puma answered.
func (d *Driver) Stop() (ok, notFound int, failed []string) {
	d.end()
	if d.unwanted != nil {
		d.t.Fatalf("the server answered with an unexpected status: %v", d.unwanted)
	}
	return d.ok, d.nf, d.failed
}

// WaitReplaced waits until none of the gone workers is in the targets file
// and n are, and returns the live workers' pids.
func WaitReplaced(t testing.TB, stack *servertest.Stack, n int, gone []int, timeout time.Duration) map[int]bool {
	t.Helper()
	var live map[int]bool
	var seen string
	poll.Until(t, timeout, func() bool {
		ts := stack.Targets(t)
		live = Pids(ts)
		seen = fmt.Sprint(ts)
		if len(live) != n {
			return false
		}
		for _, pid := range gone {
			if live[pid] {
				return false
			}
		}
		return true
	}, "workers %v not replaced; targets: %s", gone, poll.Latest(&seen))
	return live
}

// Pids are the targets' workers.
func Pids(ts []servertest.Target) map[int]bool {
	m := map[int]bool{}
	for _, tg := range ts {
		m[tg.Pid()] = true
	}
	return m
}

// Any is one of the pids.
func Any(pids map[int]bool) int {
	for pid := range pids {
		return pid
	}
	return 0
}

// CheckTotals fails the test unless Prometheus' reset-aware total of each
// selector's raw samples over (start, end] is exactly its truth; it logs
// each.
func CheckTotals(t testing.TB, stack *servertest.Stack, start, end time.Time, truths map[string]float64) {
	t.Helper()
	for sel, truth := range truths {
		got := stack.Total(t, sel, start, end)
		t.Logf("%-60s truth %8.0f  reset-aware total of the raw samples %9.0f", sel, truth, got)
		if got != truth {
			t.Errorf("%s: Prometheus' total %v, want exactly %v", sel, got, truth)
			servertest.LogSeries(t, stack.PromURL, sel, start, end)
		}
	}
}

// CheckLog fails the test if the server's log has a workersd line saying
// that counts may have been lost.
func CheckLog(t testing.TB, log string) {
	t.Helper()
	for _, bad := range []string{"registration failed", "no final scrape", "deregistration of", "/metrics fails", "final scrape of"} {
		if strings.Contains(log, "workersd: "+bad) {
			t.Errorf("the server's log says %q", bad)
		}
	}
}

// StackOptions are the stack's settings for the Ruby examples: the
// production default slot hold (30 s) rather than the harness' 15 s, so
// that a test's recycles all fall within one hold window. Within it no slot
// is reused, and the instances are bounded by the harness' check exactly; a
// registration just after a freed slot's window may still find it held
// (etcd expires a lease a little after its TTL), which that check does not
// allow for.
var StackOptions = servertest.Options{SlotHold: 30 * time.Second}
