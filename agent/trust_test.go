//go:build linux

package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/workersd/workersd/internal/testing/buildtest"
)

// Two local users, uids 65534 and 65533, each with a worker process of its
// own, call the agent's socket (opened to every user for the test, so that
// the peer credentials are the only guard). Issue 12, findings 2 to 4:
// each registers and removes only its own processes; pid 1, a kernel thread
// and the agent itself are refused; an address that is not this host's,
// or another worker's, is refused; every refusal leaves etcd as it was.
func TestForeignCallersAreRefused(t *testing.T) {
	buildtest.RequireRoot(t, "running processes under other uids")
	h := newHarness(t, nil, nil)
	lim, err := NewConnLimiter(LimitConfig{})
	if err != nil {
		t.Fatal(err)
	}
	sock := serveAPI(t, h, ServerConfig{}, lim)
	// The callers are this test binary, run again as the other users.
	c := callers{t: t, bin: callerBinary(t, filepath.Dir(sock)), sock: sock}
	const userA, userB = 65534, 65533
	pA, pB, pB2 := sleeperOf(t, userA), sleeperOf(t, userB), sleeperOf(t, userB)
	unchanged := func(what string, want int) {
		t.Helper()
		if regs := h.keys(); len(regs) != want {
			t.Fatalf("%s changed etcd: %d registrations, want %d: %v", what, len(regs), want, regs)
		}
	}

	c.expect("A registers its own worker", userA, "POST", map[string]any{"job": "api", "port": 9001, "pid": pA}, 201, "registered")
	c.expect("B registers A's worker", userB, "POST", map[string]any{"job": "api", "port": 9002, "pid": pA}, 403, "its own processes")
	unchanged("B registering A's worker", 1)
	c.expect("B removes A's worker", userB, "DELETE", pA, 403, "its own processes")
	unchanged("B removing A's worker", 1)
	c.expect("B registers its own worker", userB, "POST", map[string]any{"job": "api", "port": 9002, "pid": pB}, 201, "registered")
	c.expect("A removes B's worker", userA, "DELETE", pB, 403, "its own processes")

	// Processes that can never be workers, whoever asks.
	for _, tc := range []struct {
		name string
		pid  int
		msg  string
	}{
		{"init", 1, "init"},
		{"the agent", os.Getpid(), "the agent itself"},
		{"a kernel thread", 2, "kernel thread"},
	} {
		c.expect("A registers "+tc.name, userA, "POST", map[string]any{"job": "api", "port": 9003, "pid": tc.pid}, 422, tc.msg)
		code, out := h.do("POST", "/v1/workers", map[string]any{"job": "api", "port": 9003, "pid": tc.pid})
		errMsg, _ := out["error"].(string)
		if code != 422 || !strings.Contains(errMsg, tc.msg) {
			t.Errorf("root registers %s: %d %s, want 422 and %q", tc.name, code, errMsg, tc.msg)
		}
	}
	// Addresses elsewhere: Prometheus must not be made to fetch them.
	for _, addr := range []string{"192.0.2.10:80", "169.254.169.254:80"} {
		c.expect("B registers "+addr, userB, "POST", map[string]any{"job": "api", "address": addr, "pid": pB2, "metrics_path": "/latest/meta-data/"}, 403, "not an address of this host")
	}
	// Another worker's address: its target would be taken over.
	c.expect("B registers A's address", userB, "POST", map[string]any{"job": "other", "address": "127.0.0.1:9001", "pid": pB2}, 409, "already registered")
	unchanged("the refused registrations", 2)

	c.expect("A removes its own worker", userA, "DELETE", pA, 200, "deregistered")
	unchanged("A removing its worker", 1)
	if regs := h.keys(); regs[prefix+"api/web-1/1"].PID != pB {
		t.Errorf("B's registration is not the one left: %v", regs)
	}
}

// callers make requests on the agent's socket as other users, through
// TestHelperCaller.
type callers struct {
	t         *testing.T
	bin, sock string
}

// expect makes one request as uid and checks its answer: a POST of body
// (a registration), or a DELETE of the worker whose pid body is.
func (c callers) expect(what string, uid int, method string, body any, want int, wantMsg string) {
	c.t.Helper()
	path := "/v1/workers"
	if method == "DELETE" {
		path += "/" + strconv.Itoa(body.(int))
		body = nil
	}
	j, _ := json.Marshal(body)
	cmd := asUser(exec.Command(c.bin, "-test.run=^TestHelperCaller$"), uid)
	cmd.Env = []string{"WORKERSD_CALLER_SOCKET=" + c.sock, "WORKERSD_CALLER_METHOD=" + method,
		"WORKERSD_CALLER_PATH=" + path, "WORKERSD_CALLER_BODY=" + string(j)}
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("caller as uid %d: %v\n%s", uid, err, out)
	}
	var status int
	var msg string
	for line := range strings.SplitSeq(string(out), "\n") {
		if r, ok := strings.CutPrefix(line, "STATUS "); ok {
			code, rest, _ := strings.Cut(r, " ")
			status, _ = strconv.Atoi(code)
			msg = rest
		}
	}
	if status == 0 {
		c.t.Fatalf("caller as uid %d printed no status:\n%s", uid, out)
	}
	if status != want || !strings.Contains(msg, wantMsg) {
		c.t.Errorf("%s: %d %s, want %d and %q", what, status, msg, want, wantMsg)
	}
}

// TestHelperCaller is the caller process of TestForeignCallersAreRefused:
// one request on the socket, its status and body on standard output.
func TestHelperCaller(t *testing.T) {
	sock := os.Getenv("WORKERSD_CALLER_SOCKET")
	if sock == "" {
		t.Skip("helper process")
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	var body io.Reader
	if b := os.Getenv("WORKERSD_CALLER_BODY"); b != "" && b != "null" {
		body = bytes.NewBufferString(b)
	}
	req, err := http.NewRequest(os.Getenv("WORKERSD_CALLER_METHOD"), "http://agent"+os.Getenv("WORKERSD_CALLER_PATH"), body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	fmt.Printf("STATUS %d %s\n", resp.StatusCode, bytes.TrimSpace(out))
}

// Issue 12, acceptance 4: the agent's series do not grow with what clients
// send: methods, paths, bodies and refusals of every kind.
func TestSeriesDoNotGrowWithRequests(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, nil, withMetrics(t, reg))
	c := child(t)
	if code, w := h.do("POST", "/v1/workers", map[string]any{"job": "api", "port": 9000, "pid": c.Process.Pid}); code != 201 {
		t.Fatalf("register: %d %v", code, w)
	}
	series := func() int {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, mf := range mfs {
			n += len(mf.Metric)
		}
		return n
	}
	// Every status the API can answer, once, so that what follows can
	// only add series if a client could choose them.
	for _, body := range []any{nil, []byte("{"), map[string]any{"job": "x", "port": 1, "pid": 1}, map[string]any{"job": "x", "address": "192.0.2.1:1", "pid": c.Process.Pid}} {
		h.do("POST", "/v1/workers", body)
	}
	h.do("DELETE", "/v1/workers/1", nil)
	h.do("GET", "/v1/workers/1", nil)
	raw := func(method, path string) {
		req, _ := http.NewRequest(method, "http://agent"+path, nil)
		resp, err := h.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	raw("PUT", "/v1/workers")
	raw("GET", "/nowhere")
	raw("M", "/nowhere")
	before := series()
	for i := range 200 {
		raw(fmt.Sprintf("M%d", i), fmt.Sprintf("/v1/x%d", i))
		h.do("GET", fmt.Sprintf("/v1/workers/%d", 100000+i), nil)
		h.do("POST", "/v1/workers", map[string]any{"job": fmt.Sprintf("job-%d", i), "port": 9000, "pid": 1})
	}
	after := series()
	t.Logf("agent series: %d before, %d after 600 odd requests", before, after)
	if after != before || after >= 100 {
		t.Errorf("agent series: %d before, %d after, want the same and below 100", before, after)
	}
}
