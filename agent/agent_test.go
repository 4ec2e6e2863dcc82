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
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
)

const prefix = registrar.DefaultPrefix

// harness is an agent served on a real Unix socket, against real etcd.
type harness struct {
	t      testing.TB
	etcd   *etcdtest.Server
	cli    *clientv3.Client
	agent  *Agent
	http   *http.Client
	socket string
	srv    *http.Server
	cfg    Config
}

func newHarness(t testing.TB, etcd *etcdtest.Server, mod func(*Config)) *harness {
	t.Helper()
	if etcd == nil {
		etcd = etcdtest.Start(t)
	}
	h := &harness{t: t, etcd: etcd, cli: etcd.Client(t)}
	h.cfg = Config{
		Client:    h.cli,
		Host:      "web-1",
		TTL:       2 * time.Second,
		StateFile: filepath.Join(t.TempDir(), "agent.json"),
		Logger:    hclog.New(&hclog.LoggerOptions{Name: "agent", Level: hclog.Warn, Output: testWriter{t}}),
	}
	if mod != nil {
		mod(&h.cfg)
	}
	h.start()
	return h
}

// start (re)starts the agent process part: a new Agent on a new socket.
func (h *harness) start() {
	t := h.t
	t.Helper()
	a, err := New(h.cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	h.agent = a
	h.socket = filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", h.socket)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	h.srv = a.NewServer()
	go h.srv.Serve(ln)
	sock := h.socket
	h.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	t.Cleanup(h.stop)
}

// stop is what SIGTERM does to the agent: the API closes, nothing is revoked.
func (h *harness) stop() {
	h.srv.Close()
	h.agent.Close(context.Background())
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (h *harness) do(method, path string, body any) (int, map[string]any) {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, "http://agent"+path, rd)
	resp, err := h.http.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out := map[string]any{}
	raw, _ := io.ReadAll(resp.Body)
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			h.t.Fatalf("%s %s: %d, not JSON: %q", method, path, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, out
}

// keys returns every registration under the prefix.
func (h *harness) keys() map[string]registrar.Registration {
	h.t.Helper()
	resp, err := h.cli.Get(context.Background(), prefix, clientv3.WithPrefix())
	if err != nil {
		h.t.Fatalf("get: %v", err)
	}
	out := map[string]registrar.Registration{}
	for _, kv := range resp.Kvs {
		r, err := registrar.Decode(prefix, kv.Key, kv.Value)
		if err != nil {
			h.t.Fatalf("invalid registration %s: %v", kv.Key, err)
		}
		out[string(kv.Key)] = r
	}
	return out
}

// leases maps every registration's key to its lease.
func (h *harness) leases() map[string]int64 {
	h.t.Helper()
	return h.leasesUnder(prefix)
}

// leasesUnder maps every key under p to its lease.
func (h *harness) leasesUnder(p string) map[string]int64 {
	h.t.Helper()
	resp, err := h.cli.Get(context.Background(), p, clientv3.WithPrefix())
	if err != nil {
		h.t.Fatal(err)
	}
	m := map[string]int64{}
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = kv.Lease
	}
	return m
}

// child starts a process to register; it is killed when the test ends.
func child(t testing.TB) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func TestRegisterListDeregister(t *testing.T) {
	h := newHarness(t, nil, nil)
	c := child(t)
	pid := c.Process.Pid
	code, w := h.do("POST", "/v1/workers", map[string]any{
		"job": "api", "port": 40211, "pid": pid, "labels": map[string]string{"version": "1.4.2"},
	})
	if code != http.StatusCreated || w["state"] != "registered" || w["key"] != prefix+"api/web-1/0" || w["slot"] != 0.0 {
		t.Fatalf("register: %d %v", code, w)
	}
	// The same etcd data an embedded Go worker writes: address from the
	// route to etcd (loopback here), pid, process start time, labels.
	regs := h.keys()
	r, ok := regs[prefix+"api/web-1/0"]
	if !ok || len(regs) != 1 {
		t.Fatalf("keys: %v", regs)
	}
	if r.Address != "127.0.0.1:40211" || r.PID != pid || r.Labels["version"] != "1.4.2" || r.StartedAt.IsZero() {
		t.Fatalf("value: %+v", r.Value)
	}
	if d := time.Since(r.StartedAt); d < 0 || d > time.Minute {
		t.Fatalf("started_at %s is not the child's start time", r.StartedAt)
	}

	// Registering the same process again with the same request is
	// idempotent; with another request it conflicts.
	code, again := h.do("POST", "/v1/workers", map[string]any{
		"job": "api", "port": 40211, "pid": pid, "labels": map[string]string{"version": "1.4.2"},
	})
	if code != http.StatusOK || again["id"] != w["id"] {
		t.Fatalf("re-register: %d %v", code, again)
	}
	code, conflict := h.do("POST", "/v1/workers", map[string]any{"job": "api", "port": 40212, "pid": pid})
	if code != http.StatusConflict || !strings.Contains(conflict["error"].(string), "already registered") {
		t.Fatalf("conflicting register: %d %v", code, conflict)
	}

	code, list := h.do("GET", "/v1/workers", nil)
	ws := list["workers"].([]any)
	if code != 200 || len(ws) != 1 || ws[0].(map[string]any)["pid"] != float64(pid) || ws[0].(map[string]any)["watch"] != "pidfd" {
		t.Fatalf("list: %d %v", code, list)
	}
	if code, got := h.do("GET", "/v1/workers/"+w["id"].(string), nil); code != 200 || got["pid"] != float64(pid) {
		t.Fatalf("get by id: %d %v", code, got)
	}

	// The state file says what a restarted agent needs.
	st, err := readState(h.cfg.StateFile)
	if err != nil || len(st.Workers) != 1 || st.Workers[0].Key != prefix+"api/web-1/0" || st.Workers[0].Lease == 0 {
		t.Fatalf("state file: %+v %v", st, err)
	}
	if fi, _ := os.Stat(h.cfg.StateFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v", fi.Mode())
	}

	code, del := h.do("DELETE", "/v1/workers/"+strconv.Itoa(pid), nil)
	if code != 200 || del["state"] != "deregistered" {
		t.Fatalf("delete: %d %v", code, del)
	}
	if regs := h.keys(); len(regs) != 0 {
		t.Fatalf("key left after delete: %v", regs)
	}
	if code, _ := h.do("DELETE", "/v1/workers/"+strconv.Itoa(pid), nil); code != http.StatusNotFound {
		t.Fatalf("second delete: %d, want 404", code)
	}
	if st, _ := readState(h.cfg.StateFile); len(st.Workers) != 0 {
		t.Fatalf("state file after delete: %+v", st)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	h := newHarness(t, nil, nil)
	c := child(t)
	pid := c.Process.Pid
	// A process that has exited (and been reaped).
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	// One valid registration that must survive every bad request.
	if code, w := h.do("POST", "/v1/workers", map[string]any{"job": "api", "port": 1, "pid": pid}); code != 201 {
		t.Fatalf("register: %d %v", code, w)
	}
	other := child(t).Process.Pid
	big := []byte(`{"job":"api","port":1,"pid":` + strconv.Itoa(other) + `,"labels":{"x":"` + strings.Repeat("a", MaxBodySize) + `"}}`)
	// Issue 12, finding 7: within every per-label limit, too big together.
	wide := map[string]string{}
	for i := range registrar.MaxLabels {
		wide[fmt.Sprintf("l%02d", i)] = strings.Repeat("x", registrar.MaxLabelValueLen)
	}
	for _, tc := range []struct {
		name   string
		body   any
		status int
		field  string
		msg    string
	}{
		{"job with slash", map[string]any{"job": "a/b", "port": 9000, "pid": other}, 400, "job", "'/'"},
		{"no job", map[string]any{"port": 9000, "pid": other}, 400, "job", "empty"},
		{"port out of range", map[string]any{"job": "api", "port": 70000, "pid": other}, 400, "port", "out of range"},
		{"no port nor address", map[string]any{"job": "api", "pid": other}, 400, "port", "out of range"},
		{"port and address", map[string]any{"job": "api", "port": 1, "address": "127.0.0.1:2", "pid": other}, 400, "port", "not both"},
		{"bad address", map[string]any{"job": "api", "address": "127.0.0.1:0", "pid": other}, 400, "address", "out of range"},
		{"invalid label", map[string]any{"job": "api", "port": 9000, "pid": other, "labels": map[string]string{"foo-bar": "x"}}, 400, "labels.foo-bar", "not a valid label name"},
		{"reserved label", map[string]any{"job": "api", "port": 9000, "pid": other, "labels": map[string]string{"instance": "x"}}, 400, "labels.instance", "cannot be overridden"},
		{"bad scheme", map[string]any{"job": "api", "port": 9000, "pid": other, "scheme": "ftp"}, 400, "scheme", "neither"},
		{"labels too big together", map[string]any{"job": "api", "port": 9000, "pid": other, "labels": wide}, 400, "labels", "at most"},
		{"metrics path not a path", map[string]any{"job": "api", "port": 9000, "pid": other, "metrics_path": "/latest/../v3/kv/range"}, 400, "metrics_path", "absolute URL path"},
		{"no pid", map[string]any{"job": "api", "port": 9000}, 400, "pid", "required"},
		{"dead pid", map[string]any{"job": "api", "port": 9000, "pid": dead.Process.Pid}, 422, "pid", "not a running process"},
		{"unknown field", map[string]any{"job": "api", "port": 9000, "pid": other, "ttl": 5}, 400, "", "unknown field"},
		{"not JSON", []byte(`{"job":`), 400, "", "invalid JSON"},
		{"body too large", big, 413, "", "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := h.do("POST", "/v1/workers", tc.body)
			if code != tc.status {
				t.Fatalf("status %d, want %d: %v", code, tc.status, out)
			}
			if f, _ := out["field"].(string); f != tc.field {
				t.Errorf("field %q, want %q", f, tc.field)
			}
			if msg, _ := out["error"].(string); !strings.Contains(msg, tc.msg) {
				t.Errorf("error %q lacks %q", msg, tc.msg)
			}
		})
	}
	if code, _ := h.do("DELETE", "/v1/workers/999999999", nil); code != 404 {
		t.Errorf("delete unknown pid: %d, want 404", code)
	}
	if code, _ := h.do("DELETE", "/v1/workers/api", nil); code != 404 {
		t.Errorf("delete garbage id: %d, want 404", code)
	}
	if regs := h.keys(); len(regs) != 1 || regs[prefix+"api/web-1/0"].PID != pid {
		t.Fatalf("bad requests changed etcd: %v", regs)
	}
	if ws := h.agent.List(); len(ws) != 1 || ws[0].PID != pid {
		t.Fatalf("bad requests changed the agent: %+v", ws)
	}
}

// A worker killed with SIGKILL is removed from etcd within 200 ms, through
// a pidfd and through polling.
func TestExitRevokesAtOnce(t *testing.T) {
	etcd := etcdtest.Start(t)
	for _, mode := range []string{"pidfd", "poll"} {
		t.Run(mode, func(t *testing.T) {
			h := newHarness(t, etcd, func(c *Config) { c.DisablePidfd = mode == "poll" })
			c := child(t)
			code, w := h.do("POST", "/v1/workers", map[string]any{"job": "exit-" + mode, "port": 9000, "pid": c.Process.Pid})
			if code != 201 || w["state"] != "registered" || w["watch"] != mode {
				t.Fatalf("register: %d %v", code, w)
			}
			gone := watchDelete(t, h.cli, w["key"].(string))
			// Not reaped before the check: the agent must see a zombie as dead.
			killed := time.Now()
			c.Process.Signal(syscall.SIGKILL)
			var took time.Duration
			select {
			case at := <-gone:
				took = at.Sub(killed)
			case <-time.After(5 * time.Second):
				t.Fatal("key not removed 5s after SIGKILL")
			}
			t.Logf("%s: key removed %s after SIGKILL", mode, took)
			if took > 200*time.Millisecond {
				t.Errorf("key removed %s after SIGKILL, goal 200ms", took)
			}
			poll.Until(t, 2*time.Second, func() bool {
				st, _ := readState(h.cfg.StateFile)
				return len(h.agent.List()) == 0 && len(st.Workers) == 0
			}, "agent or its state file still lists the worker")
		})
	}
}

// watchDelete reports when key is deleted.
func watchDelete(t testing.TB, cli *clientv3.Client, key string) <-chan time.Time {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get %s: %v", key, err)
	}
	wch := cli.Watch(ctx, key, clientv3.WithRev(resp.Header.Revision+1))
	out := make(chan time.Time, 1)
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					out <- time.Now()
					return
				}
			}
		}
	}()
	return out
}

// An agent restart adopts the live workers' keys and leases (no second
// slot, not even for a TTL), revokes the lease of a worker that died while
// it was down, and resurrects nothing.
func TestRestartAdoptsLiveAndDropsDead(t *testing.T) {
	h := newHarness(t, nil, nil)
	live, doomed := child(t), child(t)
	for _, c := range []*exec.Cmd{live, doomed} {
		if code, w := h.do("POST", "/v1/workers", map[string]any{"job": "api", "port": 9000 + c.Process.Pid%1000, "pid": c.Process.Pid}); code != 201 || w["state"] != "registered" {
			t.Fatalf("register: %d %v", code, w)
		}
	}
	before := h.keys()
	if len(before) != 2 {
		t.Fatalf("keys: %v", before)
	}
	leases := h.leases()

	h.stop() // SIGTERM: nothing is revoked
	if got := h.keys(); len(got) != 2 {
		t.Fatalf("a stopping agent revoked: %v", got)
	}
	doomed.Process.Kill()
	doomed.Wait()

	h.start()
	var doomedKey string
	for k, r := range before {
		if r.PID == doomed.Process.Pid {
			doomedKey = k
		}
	}
	poll.Until(t, 2*time.Second, func() bool { _, ok := h.keys()[doomedKey]; return !ok },
		"the dead worker's key %s was not revoked", doomedKey)
	ws := h.agent.List()
	if len(ws) != 1 || ws[0].PID != live.Process.Pid {
		t.Fatalf("restored: %+v", ws)
	}
	poll.Until(t, 2*time.Second, func() bool { return h.agent.List()[0].State == "registered" }, "not registered")
	// Held beyond the old lease's TTL: still one key, same slot, same lease.
	deadline := time.Now().Add(h.cfg.TTL + 1500*time.Millisecond)
	for time.Now().Before(deadline) {
		got := h.leases()
		if len(got) != 1 {
			t.Fatalf("after restart: %v, want only the live worker's key", got)
		}
		for k, l := range got {
			if before[k].PID != live.Process.Pid || l != leases[k] {
				t.Fatalf("after restart %s on lease %x, want the adopted one (%v)", k, l, leases)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	// And the adopted registration is still watched.
	live.Process.Kill()
	poll.Until(t, time.Second, func() bool { return len(h.keys()) == 0 }, "adopted worker not revoked on exit")
}

// Issue 12, finding 9: a corrupt state file was overwritten with an empty
// state, and the live workers vanished from Prometheus after the TTL. It is
// now kept aside, counted, and the live workers' registrations are rebuilt
// from etcd: same keys, same leases, still watched.
func TestCorruptStateFileIsKeptAsideAndRebuiltFromEtcd(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, nil, withMetrics(t, reg))
	a, b := child(t), child(t)
	for i, c := range []*exec.Cmd{a, b} {
		if code, w := h.do("POST", "/v1/workers", map[string]any{"job": "api", "port": 9100 + i, "pid": c.Process.Pid}); code != 201 || w["state"] != "registered" {
			t.Fatalf("register: %d %v", code, w)
		}
	}
	// A worker that registered itself on this host (package worker): its
	// started_at is its registration's, to the nanosecond. Not the agent's
	// to adopt, even though its process lives.
	self := child(t)
	ticks, err := processStartTicks(self.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	started, _ := processStartTime(ticks)
	v, err := registrar.Value{Address: "127.0.0.1:9199", PID: self.Process.Pid, StartedAt: started.Add(123)}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	lease, err := h.cli.Grant(context.Background(), 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.cli.Put(context.Background(), prefix+"self/web-1/0", string(v), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	before := h.leases()
	h.stop()
	if err := os.WriteFile(h.cfg.StateFile, []byte(`{"version":1,"workers":[{"pid":`), 0o600); err != nil {
		t.Fatal(err)
	}
	reg2 := prometheus.NewRegistry()
	withMetrics(t, reg2)(&h.cfg)
	h.start()
	if ws := h.agent.List(); len(ws) != 2 || ws[0].PID == self.Process.Pid || ws[1].PID == self.Process.Pid {
		t.Fatalf("rebuilt %d workers, want the agent's 2 and not the self-registered one: %+v", len(ws), ws)
	}
	if got := gatherValues(t, reg2)["workersd_agent_state_file_bad_total"]; got != 1 {
		t.Errorf("workersd_agent_state_file_bad_total = %v, want 1", got)
	}
	aside, _ := filepath.Glob(h.cfg.StateFile + ".bad-*")
	if len(aside) != 1 {
		t.Fatalf("the bad file was not kept aside: %v", aside)
	}
	if b, _ := os.ReadFile(aside[0]); string(b) != `{"version":1,"workers":[{"pid":` {
		t.Errorf("kept aside: %q", b)
	}
	// Beyond the old leases' TTL: the same keys on the same leases.
	deadline := time.Now().Add(h.cfg.TTL + 1500*time.Millisecond)
	for time.Now().Before(deadline) {
		if got := h.leases(); fmt.Sprint(got) != fmt.Sprint(before) {
			t.Fatalf("after the rebuild %v, want %v", got, before)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Still watched, and written to a good state file again.
	a.Process.Kill()
	poll.Until(t, 2*time.Second, func() bool { return len(h.keys()) == 2 }, "a rebuilt worker was not revoked on exit")
	// The state file is written after the revoke.
	poll.Until(t, 5*time.Second, func() bool {
		st, err := readState(h.cfg.StateFile)
		return err == nil && len(st.Workers) == 1 && st.Workers[0].PID == b.Process.Pid
	}, "the state file after the rebuild does not hold the one live worker")
}

// Two agents on one state file would revoke each other's registrations:
// the second refuses to start.
func TestStateFileIsLocked(t *testing.T) {
	h := newHarness(t, nil, nil)
	second, err := New(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = second.Start(context.Background())
	defer second.Close(context.Background())
	if err == nil || !strings.Contains(err.Error(), "another agent") {
		t.Fatalf("a second agent on the same state file started: %v", err)
	}
}

// With etcd down a registration answers at once as pending and appears
// once etcd is back.
func TestRegisterWhileEtcdDown(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.etcd.Stop()
	c := child(t)
	start := time.Now()
	code, w := h.do("POST", "/v1/workers", map[string]any{"job": "api", "port": 9000, "pid": c.Process.Pid})
	if code != 201 || w["state"] != "pending" || w["slot"] != -1.0 {
		t.Fatalf("register with etcd down: %d %v", code, w)
	}
	if d := time.Since(start); d > 2*DefaultRegisterWait {
		t.Fatalf("register took %s with etcd down", d)
	}
	h.etcd.Restart()
	poll.Until(t, 15*time.Second, func() bool { return len(h.keys()) == 1 }, "not registered after etcd came back")
	poll.Until(t, 2*time.Second, func() bool {
		st, _ := readState(h.cfg.StateFile)
		return len(st.Workers) == 1 && st.Workers[0].Lease != 0
	}, "lease not persisted")
}

func TestParseProcStat(t *testing.T) {
	line := "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	st, err := parseProcStat([]byte(line))
	if err != nil || st.State != 'S' || st.StartTicks != 987654 {
		t.Fatalf("parse: %+v %v", st, err)
	}
	if _, err := parseProcStat([]byte("4242 (x) S 1")); err == nil {
		t.Fatal("short line accepted")
	}
	// A recorded start time that does not match means another process.
	ticks, err := processStartTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !alive(os.Getpid(), ticks) || alive(os.Getpid(), ticks+1) {
		t.Fatal("alive does not compare start times")
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, nil, withMetrics(t, reg))
	c := child(t)
	h.do("POST", "/v1/workers", map[string]any{"job": "api", "port": 9000, "pid": c.Process.Pid})
	h.do("POST", "/v1/workers", map[string]any{"job": "a/b", "port": 9000, "pid": c.Process.Pid})
	c.Process.Kill()
	// The worker leaves List when its entry is taken, before the revoke
	// and its observation: wait for the observation itself.
	var got map[string]float64
	poll.Until(t, 5*time.Second, func() bool {
		got = gatherValues(t, reg)
		return len(h.agent.List()) == 0 && got["workersd_agent_exit_to_revoke_seconds"] == 1
	}, "the exit was not observed in the metrics")
	for name, want := range map[string]float64{
		"workersd_agent_registrations_total":                     1,
		"workersd_agent_deregistrations_total,reason=exited":     1,
		"workersd_agent_workers":                                 0,
		"workersd_agent_exit_to_revoke_seconds":                  1,
		"workersd_agent_api_requests_total,code=201,method=POST": 1,
		"workersd_agent_api_requests_total,code=400,method=POST": 1,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}

// gatherValues flattens reg's metrics to "name,label=value" -> value (a
// histogram's sample count).
func gatherValues(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			name := mf.GetName()
			for _, l := range m.Label {
				name += fmt.Sprintf(",%s=%s", l.GetName(), l.GetValue())
			}
			switch {
			case m.Counter != nil:
				got[name] = m.Counter.GetValue()
			case m.Gauge != nil:
				got[name] = m.Gauge.GetValue()
			case m.Histogram != nil:
				got[name] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return got
}

// Close stops every goroutine the agent started (watchers, registration
// loops, the state syncer) without revoking.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	if _, err := cli.Get(context.Background(), "warm-up"); err != nil {
		t.Fatal(err)
	}
	c := child(t)
	ignore := goleak.IgnoreCurrent()
	own, err := etcdclient.New([]string{etcd.Endpoint()}, clientv3.Config{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Client: own, Host: "web-1", TTL: 2 * time.Second, StateFile: filepath.Join(t.TempDir(), "s.json")})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Register(context.Background(), Request{Job: "api", Port: 9000, PID: c.Process.Pid}); err != nil {
		t.Fatal(err)
	}
	a.Close(context.Background())
	own.Close()
	goleak.VerifyNone(t, ignore)
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 1 {
		t.Fatalf("after Close: %v keys, %v; want the registration kept", resp.Count, err)
	}
}

// A DELETE that waits for an unreachable etcd must not hold up other
// workers' registrations.
func TestDeregisterWithEtcdDownDoesNotBlockRegister(t *testing.T) {
	// A removal waits up to RemoveWait: long, so that a register held
	// behind it cannot be mistaken for a slow one on a loaded machine.
	h := newHarness(t, nil, func(c *Config) { c.TTL = 2 * time.Second; c.RemoveWait = 5 * time.Second })
	first := child(t)
	if code, w := h.do("POST", "/v1/workers", map[string]any{"job": "api", "port": 9000, "pid": first.Process.Pid}); code != 201 {
		t.Fatalf("register: %d %v", code, w)
	}
	poll.Until(t, 10*time.Second, func() bool { return len(h.keys()) == 1 }, "first worker not registered")
	h.etcd.Stop()

	deleted := make(chan int, 1)
	go func() {
		code, _ := h.do("DELETE", fmt.Sprintf("/v1/workers/%d", first.Process.Pid), nil)
		deleted <- code
	}()
	// The DELETE is now waiting for etcd (up to RemoveWait); give it the
	// time to take the entry, then register another worker.
	poll.Until(t, 5*time.Second, func() bool {
		_, w := h.do("GET", "/v1/workers", nil)
		ws, _ := w["workers"].([]any)
		return len(ws) == 0
	}, "the DELETE did not take the entry")
	second := child(t)
	start := time.Now()
	code, w := h.do("POST", "/v1/workers", map[string]any{"job": "api", "port": 9001, "pid": second.Process.Pid})
	if code != 201 || w["state"] != "pending" {
		t.Fatalf("register during a pending DELETE: %d %v", code, w)
	}
	if d := time.Since(start); d > h.cfg.RemoveWait-time.Second {
		t.Fatalf("register waited %s behind a DELETE stuck on etcd (RemoveWait %s)", d, h.cfg.RemoveWait)
	}
	// etcd never confirmed: the removal is pending, not done.
	if code := <-deleted; code != http.StatusAccepted {
		t.Fatalf("DELETE answered %d; want 202 (removal pending)", code)
	}
}
