//go:build linux

package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/workersd/workersd/internal/metrictest"
	"github.com/workersd/workersd/internal/poll"
)

// serveAPI serves h's agent with cfg on a new Unix socket behind lim,
// open to every user (mode 0666 in a 0755 directory) so that the peer
// credentials and the limits are the only guards. It returns the socket.
func serveAPI(t *testing.T, h *harness, cfg ServerConfig, lim *ConnLimiter) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "workersd-limits-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	srv := h.agent.NewServerWith(cfg)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lim.Listener(ln)) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return sock
}

// openFDs counts the test process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("runs processes under other uids: needs root, which CI has")
		}
		t.Skip("runs processes under other uids: needs root")
	}
}

// Issue 21, acceptance 4: one user holds 1,000 idle keep-alive connections
// and 1,000 sending a request body a byte at a time (each was ~16 KB and a
// descriptor of the agent's until it ran out: accept4: too many open
// files). With the default limits and short timeouts: a worker of another
// user registers within 1 s meanwhile, the agent's descriptors grow by at
// most the user's limit, and every held connection is closed within the
// timeouts.
func TestOneUserCannotExhaustTheAgent(t *testing.T) {
	needRoot(t)
	const flooder, worker = 65534, 65533
	const timeout = time.Second // read and idle
	h := newHarness(t, nil, nil)
	reg := prometheus.NewRegistry()
	lim, err := NewConnLimiter(LimitConfig{Registerer: reg, Logger: h.cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	sock := serveAPI(t, h, ServerConfig{ReadTimeout: timeout, IdleTimeout: timeout, WriteTimeout: 5 * time.Second}, lim)
	bin := callerBinary(t, filepath.Dir(sock))
	before := openFDs(t)
	// As few descriptors as the agent had left: without the
	// limits, the flood takes them all (accept4: too many open files) and
	// the other user's worker gets no answer.
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	low := rl
	low.Cur = uint64(before + DefaultMaxConnsPerCaller + 128)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl) })

	flood := exec.Command(bin, "-test.run=^TestHelperFlood$") // a Go binary: raises its own soft limit
	flood.Env = []string{"WORKERSD_FLOOD_SOCKET=" + sock, "WORKERSD_FLOOD_N=1000"}
	flood.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: flooder, Gid: flooder}}
	flood.Stderr = testWriter{t}
	out, err := flood.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := flood.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { flood.Process.Kill(); flood.Wait() })
	lines := bufio.NewScanner(out)
	expectLine := func(prefix string) string {
		t.Helper()
		for lines.Scan() {
			if rest, ok := strings.CutPrefix(lines.Text(), prefix); ok {
				return rest
			}
			t.Log("flood: " + lines.Text())
		}
		t.Fatalf("the flood ended without %q: %v", prefix, lines.Err())
		return ""
	}
	expectLine("OPEN ")
	held := openFDs(t) - before
	open := metrictest.Value(lim.open)

	// Now a worker of another user registers.
	sleeper := exec.Command("sleep", "300")
	sleeper.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: worker, Gid: worker}}
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	reg1 := exec.Command(bin, "-test.run=^TestHelperFlood$")
	reg1.Env = []string{"WORKERSD_FLOOD_SOCKET=" + sock, "WORKERSD_FLOOD_REGISTER=" + strconv.Itoa(sleeper.Process.Pid)}
	reg1.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: worker, Gid: worker}}
	res, err := reg1.CombinedOutput()
	if err != nil {
		t.Fatalf("the other user's worker: %v\n%s", err, res)
	}
	var status int
	var took time.Duration
	for line := range strings.SplitSeq(string(res), "\n") {
		if rest, ok := strings.CutPrefix(line, "REGISTERED "); ok {
			code, d, _ := strings.Cut(rest, " ")
			status, _ = strconv.Atoi(code)
			took, _ = time.ParseDuration(d)
		}
	}
	t.Logf("while uid %d held %.0f connections (%d descriptors of the agent), uid %d's worker registered in %s with %d", flooder, open, held, worker, took, status)
	if status != http.StatusCreated || took <= 0 || took > time.Second {
		t.Errorf("the other user's worker: status %d in %s, want 201 within 1s\n%s", status, took, res)
	}
	if regs := h.keys(); len(regs) != 1 {
		t.Errorf("registrations: %v, want the other user's worker", regs)
	}
	if open > DefaultMaxConnsPerCaller || held > DefaultMaxConnsPerCaller+64 {
		t.Errorf("the flooding user holds %.0f connections, %d descriptors: want at most %d", open, held, DefaultMaxConnsPerCaller)
	}
	if n := metrictest.Value(lim.refused.WithLabelValues("caller_limit")); n < 2000-DefaultMaxConnsPerCaller {
		t.Errorf("connections refused for the caller's limit: %.0f, want at least %d", n, 2000-DefaultMaxConnsPerCaller)
	}

	// Every held connection is closed by the server, within the timeouts
	// (and a scheduling margin).
	closed := expectLine("CLOSED ")
	n, last, _ := strings.Cut(closed, " ")
	lastClose, _ := time.ParseDuration(last)
	t.Logf("the flood saw all %s connections closed, the last %s after it opened it", n, lastClose)
	if n != "2000" || lastClose > timeout+2*time.Second {
		t.Errorf("the flood: %s connections closed, the last after %s; want 2000 within %s", n, last, timeout+2*time.Second)
	}
	poll.Until(t, 5*time.Second, func() bool { return openFDs(t) <= before+8 && metrictest.Value(lim.open) == 0 },
		"the agent's descriptors: %d before the flood, %d now; %.0f connections open", before, openFDs(t), metrictest.Value(lim.open))
	if err := flood.Wait(); err != nil {
		t.Errorf("the flood: %v", err)
	}
}

// callerBinary copies this test binary where other users can run it.
func callerBinary(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "caller")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestHelperFlood is the other users' process of
// TestOneUserCannotExhaustTheAgent. With WORKERSD_FLOOD_N, it opens that
// many idle keep-alive connections (one GET answered, then nothing) and as
// many sending a POST's body a byte every 100 ms, prints "OPEN", and once
// the agent has closed every one, "CLOSED <n> <longest life>". With
// WORKERSD_FLOOD_REGISTER, it registers that pid and prints "REGISTERED
// <status> <duration>".
func TestHelperFlood(t *testing.T) {
	sock := os.Getenv("WORKERSD_FLOOD_SOCKET")
	if sock == "" {
		t.Skip("helper process")
	}
	if pid := os.Getenv("WORKERSD_FLOOD_REGISTER"); pid != "" {
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			},
		}}
		start := time.Now()
		resp, err := client.Post("http://agent/v1/workers", "application/json", strings.NewReader(`{"job":"api","port":9100,"pid":`+pid+`}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("REGISTERED %d %s\n%s\n", resp.StatusCode, time.Since(start), body)
		return
	}
	n, _ := strconv.Atoi(os.Getenv("WORKERSD_FLOOD_N"))
	type held struct {
		c      net.Conn
		opened time.Time
		drip   bool
	}
	var conns []held
	for i := range 2 * n {
		c, err := net.Dial("unix", sock)
		for errors.Is(err, syscall.EAGAIN) { // the backlog is full: the agent accepts
			time.Sleep(time.Millisecond)
			c, err = net.Dial("unix", sock)
		}
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		drip := i%2 == 1
		req := "GET /-/healthy HTTP/1.1\r\nHost: agent\r\n\r\n"
		if drip {
			req = "POST /v1/workers HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
		}
		c.Write([]byte(req)) // refused connections fail here or read EOF below
		conns = append(conns, held{c, time.Now(), drip})
	}
	fmt.Println("OPEN", len(conns))
	var readers, drippers sync.WaitGroup
	var longest atomic.Int64
	var closed atomic.Int32
	stop := make(chan struct{})
	for _, h := range conns {
		readers.Go(func() {
			// Until the agent closes it: EOF or a reset, after its answer.
			io.Copy(io.Discard, h.c)
			life := time.Since(h.opened)
			for {
				old := longest.Load()
				if int64(life) <= old || longest.CompareAndSwap(old, int64(life)) {
					break
				}
			}
			closed.Add(1)
		})
		if h.drip {
			drippers.Go(func() {
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
						if _, err := h.c.Write([]byte(" ")); err != nil {
							return
						}
					}
				}
			})
		}
	}
	allClosed := make(chan struct{})
	go func() { readers.Wait(); close(allClosed) }()
	select {
	case <-allClosed:
	case <-time.After(time.Minute): // the parent sees the count short
	}
	count := closed.Load()
	close(stop)
	for _, h := range conns {
		h.c.Close()
	}
	readers.Wait()
	drippers.Wait()
	fmt.Println("CLOSED", count, time.Duration(longest.Load()))
}

// The limits per caller and in all, on TCP where the caller is the remote
// address (127.0.0.1 and 127.0.0.2 are two callers): what is over a limit
// is closed at once and counted, what is closed gives its place back.
func TestConnLimiterPerCallerAndTotal(t *testing.T) {
	reg := prometheus.NewRegistry()
	lim, err := NewConnLimiter(LimitConfig{MaxConnsPerCaller: 2, MaxConns: 3, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewConnLimiter(LimitConfig{Registerer: reg}); err == nil {
		t.Error("a second limiter registered the same metrics")
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := lim.Listener(inner)
	accepted := make(chan net.Conn, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closedAtOnce says whether the server closed c without a word.
	closedAtOnce := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
	}
	var kept []net.Conn
	for _, from := range []string{"127.0.0.1", "127.0.0.1"} {
		dial(from)
		kept = append(kept, <-accepted)
	}
	if c := dial("127.0.0.1"); !closedAtOnce(c) {
		t.Error("a third connection from 127.0.0.1 was not closed")
	}
	dial("127.0.0.2")
	kept = append(kept, <-accepted)
	if c := dial("127.0.0.2"); !closedAtOnce(c) {
		t.Error("a fourth connection in all was not closed")
	}
	if c, t1, t2 := metrictest.Value(lim.open), metrictest.Value(lim.refused.WithLabelValues("caller_limit")), metrictest.Value(lim.refused.WithLabelValues("total_limit")); c != 3 || t1 != 1 || t2 != 1 {
		t.Errorf("open %v, refused for the caller %v and in all %v; want 3, 1, 1", c, t1, t2)
	}
	// A place given back is taken again.
	kept[0].Close()
	kept[0].Close() // twice: counted once
	dial("127.0.0.2")
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("a closed connection's place was not given back")
	}
	if c := metrictest.Value(lim.open); c != 2 {
		t.Errorf("open connections %v, want 2", c)
	}
	// The series do not depend on the callers.
	mfs, err := reg.Gather()
	n := 0
	for _, mf := range mfs {
		n += len(mf.Metric)
	}
	if err != nil || n != 3 {
		t.Errorf("%d series (%v), want 3", n, err)
	}
}
