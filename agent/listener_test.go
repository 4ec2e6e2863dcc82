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

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/metrictest"
	"github.com/workersd/workersd/internal/testing/poll"
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

// Issue 21, acceptance 4: one user holds 1,000 idle keep-alive connections
// and 1,000 sending a request body a byte at a time (each was ~16 KB and a
// descriptor of the agent's until it ran out: accept4: too many open
// files). With the default limits and short timeouts: a worker of another
// user registers within 1 s meanwhile, the agent's descriptors grow by at
// most the user's limit, and every held connection is closed within the
// timeouts.
func TestOneUserCannotExhaustTheAgent(t *testing.T) {
	buildtest.RequireRoot(t, "running processes under other uids")
	const flooder, worker = 65534, 65533
	const timeout = time.Second // read and idle
	h := newHarness(t, nil, nil)
	lim, err := NewConnLimiter(LimitConfig{Metrics: agentMetricsOn(t, prometheus.NewRegistry()), Logger: h.cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	sock := serveAPI(t, h, ServerConfig{ReadTimeout: timeout, IdleTimeout: timeout, WriteTimeout: 5 * time.Second}, lim)
	bin := callerBinary(t, filepath.Dir(sock))
	before := openFDs(t)
	// As few descriptors as the agent had left: without the
	// limits, the flood takes them all (accept4: too many open files) and
	// the other user's worker gets no answer.
	lowerFDLimit(t, before+DefaultMaxConnsPerCaller+128)

	flood := startFlood(t, bin, sock, flooder, 1000)
	flood.expect("OPEN ")
	held := openFDs(t) - before
	open := metrictest.Value(lim.m.Connections)

	// Now a worker of another user registers.
	status, took, res := registerAs(t, bin, sock, worker, sleeperOf(t, worker))
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
	if n := metrictest.Value(lim.m.ConnectionsRefused.WithLabelValues("caller_limit")); n < 2000-DefaultMaxConnsPerCaller {
		t.Errorf("connections refused for the caller's limit: %.0f, want at least %d", n, 2000-DefaultMaxConnsPerCaller)
	}

	// Every held connection is closed by the server, within the timeouts
	// (and a scheduling margin).
	n, last, _ := strings.Cut(flood.expect("CLOSED "), " ")
	lastClose, _ := time.ParseDuration(last)
	t.Logf("the flood saw all %s connections closed, the last %s after it opened it", n, lastClose)
	if n != "2000" || lastClose > timeout+2*time.Second {
		t.Errorf("the flood: %s connections closed, the last after %s; want 2000 within %s", n, last, timeout+2*time.Second)
	}
	poll.Until(t, 5*time.Second, func() bool { return openFDs(t) <= before+8 && metrictest.Value(lim.m.Connections) == 0 },
		"the agent's descriptors: %d before the flood, %d now; %.0f connections open", before, openFDs(t), metrictest.Value(lim.m.Connections))
	if err := flood.cmd.Wait(); err != nil {
		t.Errorf("the flood: %v", err)
	}
}

// lowerFDLimit sets the test process's soft limit of descriptors to n
// until the test ends.
func lowerFDLimit(t *testing.T, n int) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	low := rl
	low.Cur = uint64(n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl) })
}

// asUser makes cmd run as uid, in the group of the same number.
func asUser(cmd *exec.Cmd, uid int) *exec.Cmd {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	return cmd
}

// sleeperOf starts a process of uid that lives as long as the test: a
// worker to register. It returns its pid.
func sleeperOf(t *testing.T, uid int) int {
	t.Helper()
	cmd := asUser(exec.Command("sleep", "300"), uid)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

// flood is a running TestHelperFlood holding connections to the agent.
type flood struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines *bufio.Scanner
}

// startFlood starts TestHelperFlood as uid with n connections of each
// kind to sock.
func startFlood(t *testing.T, bin, sock string, uid, n int) *flood {
	t.Helper()
	cmd := asUser(exec.Command(bin, "-test.run=^TestHelperFlood$"), uid) // a Go binary: raises its own soft limit
	cmd.Env = []string{"WORKERSD_FLOOD_SOCKET=" + sock, "WORKERSD_FLOOD_N=" + strconv.Itoa(n)}
	cmd.Stderr = testWriter{t}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return &flood{t: t, cmd: cmd, lines: bufio.NewScanner(out)}
}

// expect reads the flood's output up to its line starting with prefix and
// returns the rest of that line.
func (f *flood) expect(prefix string) string {
	f.t.Helper()
	for f.lines.Scan() {
		if rest, ok := strings.CutPrefix(f.lines.Text(), prefix); ok {
			return rest
		}
		f.t.Log("flood: " + f.lines.Text())
	}
	f.t.Fatalf("the flood ended without %q: %v", prefix, f.lines.Err())
	return ""
}

// registerAs registers pid through sock as uid (TestHelperFlood's other
// mode) and returns the answer's status, how long it took, and the output.
func registerAs(t *testing.T, bin, sock string, uid, pid int) (status int, took time.Duration, out []byte) {
	t.Helper()
	cmd := asUser(exec.Command(bin, "-test.run=^TestHelperFlood$"), uid)
	cmd.Env = []string{"WORKERSD_FLOOD_SOCKET=" + sock, "WORKERSD_FLOOD_REGISTER=" + strconv.Itoa(pid)}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the registration of uid %d: %v\n%s", uid, err, out)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "REGISTERED "); ok {
			code, d, _ := strings.Cut(rest, " ")
			status, _ = strconv.Atoi(code)
			took, _ = time.ParseDuration(d)
		}
	}
	return status, took, out
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
		helperRegister(t, sock, pid)
		return
	}
	n, _ := strconv.Atoi(os.Getenv("WORKERSD_FLOOD_N"))
	conns := openHeld(t, sock, n)
	fmt.Println("OPEN", len(conns))
	count, longest := holdUntilClosed(conns)
	fmt.Println("CLOSED", count, longest)
}

// helperRegister registers pid through sock and prints "REGISTERED
// <status> <duration>" and the answer.
func helperRegister(t *testing.T, sock, pid string) {
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
}

// heldConn is one connection of the flood.
type heldConn struct {
	c      net.Conn
	opened time.Time
	drip   bool
}

// openHeld opens n idle keep-alive connections to sock (one GET each) and
// n that drip a POST's body.
func openHeld(t *testing.T, sock string, n int) []heldConn {
	var conns []heldConn
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
		conns = append(conns, heldConn{c, time.Now(), drip})
	}
	return conns
}

// holdUntilClosed drips a byte every 100 ms on the dripping connections
// until the agent has closed every connection (or a minute passed), and
// returns how many it closed and the longest life of one.
func holdUntilClosed(conns []heldConn) (int32, time.Duration) {
	var readers, drippers sync.WaitGroup
	var longest atomic.Int64
	var closed atomic.Int32
	stop := make(chan struct{})
	for _, h := range conns {
		readers.Go(func() {
			// Until the agent closes it: EOF or a reset, after its answer.
			io.Copy(io.Discard, h.c)
			life := int64(time.Since(h.opened))
			for old := longest.Load(); life > old && !longest.CompareAndSwap(old, life); old = longest.Load() {
			}
			closed.Add(1)
		})
		if h.drip {
			drippers.Go(func() { drip(h.c, stop) })
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
	return count, time.Duration(longest.Load())
}

// drip writes a byte on c every 100 ms until stop or a failed write.
func drip(c net.Conn, stop <-chan struct{}) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			if _, err := c.Write([]byte(" ")); err != nil {
				return
			}
		}
	}
}

// acceptAll accepts ln's connections onto the channel it returns until the
// test ends.
func acceptAll(t *testing.T, ln net.Listener) <-chan net.Conn {
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
	return accepted
}

// The limits per caller and in all, on TCP where the caller is the remote
// address (127.0.0.1 and 127.0.0.2 are two callers): what is over a limit
// is closed at once and counted, what is closed gives its place back.
func TestConnLimiterPerCallerAndTotal(t *testing.T) {
	reg := prometheus.NewRegistry()
	lim, err := NewConnLimiter(LimitConfig{MaxConnsPerCaller: 2, MaxConns: 3, Metrics: agentMetricsOn(t, reg)})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := acceptAll(t, lim.Listener(inner))
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
	if c, t1, t2 := metrictest.Value(lim.m.Connections), metrictest.Value(lim.m.ConnectionsRefused.WithLabelValues("caller_limit")), metrictest.Value(lim.m.ConnectionsRefused.WithLabelValues("total_limit")); c != 3 || t1 != 1 || t2 != 1 {
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
	if c := metrictest.Value(lim.m.Connections); c != 2 {
		t.Errorf("open connections %v, want 2", c)
	}
	// The series do not depend on the callers.
	mfs, err := reg.Gather()
	n := 0
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "workersd_agent_connections") {
			n += len(mf.Metric)
		}
	}
	if err != nil || n != 3 {
		t.Errorf("%d series of the connections (%v), want 3", n, err)
	}
}
