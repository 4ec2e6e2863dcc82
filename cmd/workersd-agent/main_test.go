package main

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
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/logtest"
)

// syncBuffer is the agent's log as the tests read it.
type syncBuffer = logtest.Buffer

// start runs the agent in-process until the returned stop is called.
func start(t *testing.T, args ...string) (stop func() int, logs *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs = &syncBuffer{}
	ready := make(chan struct{})
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, logs, func() { close(ready) }) }()
	select {
	case <-ready:
	case code := <-done:
		cancel()
		t.Fatalf("agent exited with %d:\n%s", code, logs)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("agent not ready:\n%s", logs)
	}
	var once sync.Once
	code := 0
	stop = func() int {
		once.Do(func() { cancel(); code = <-done })
		return code
	}
	t.Cleanup(func() { stop() })
	return stop, logs
}

func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
}

func post(t *testing.T, c *http.Client, body string) (int, map[string]any) {
	t.Helper()
	resp, err := c.Post("http://agent/v1/workers", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

// The binary's wiring: socket mode, TCP API, registration through the
// socket, and a graceful stop that leaves the lease for the next agent,
// which adopts it.
func TestAgentStopAndRestartKeepsRegistration(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "agent.sock")
	tcp := etcdtest.FreeAddr(t)
	const token = "0123456789abcdef-test-token"
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--etcd.endpoints=" + etcd.Endpoint(), "--host=web-1", "--ttl=2s",
		"--listen.socket=" + sock, "--listen.address=" + tcp, "--listen.token-file=" + tokenFile,
		"--state.file=" + filepath.Join(dir, "lib", "agent.json"),
		"--web.listen-address=" + etcdtest.FreeAddr(t),
	}
	stop, logs := start(t, args...)
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket: %v %v", fi.Mode(), err)
	}
	child := exec.Command("sleep", "300")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	code, w := post(t, unixClient(sock), fmt.Sprintf(`{"job":"api","port":40211,"pid":%d}`, child.Process.Pid))
	if code != 201 || w["state"] != "registered" {
		t.Fatalf("register: %d %v", code, w)
	}
	// The TCP API is the same API, for holders of the token only, and
	// never for a browser (issue 12, finding 5: a text/plain POST with a
	// foreign Host and Origin, as a page would send it, got 201).
	body := fmt.Sprintf(`{"job":"api","port":40212,"pid":%d}`, child.Process.Pid)
	for _, tc := range []struct {
		name, method, host, origin, ctype, auth string
		want                                    int
	}{
		{"token", "GET", "", "", "", "Bearer " + token, 200},
		{"no token", "GET", "", "", "", "", 401},
		{"wrong token", "GET", "", "", "", "Bearer nope", 401},
		{"browser form", "POST", "evil.example", "http://evil.example", "text/plain", "", 403},
		{"foreign Host", "GET", "evil.example", "", "", "Bearer " + token, 403},
		{"Origin", "GET", "", "http://evil.example", "", "Bearer " + token, 403},
		{"not JSON", "POST", "", "", "text/plain", "Bearer " + token, 415},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+tcp+"/v1/workers", strings.NewReader(body))
		if tc.host != "" {
			req.Host = tc.host
		}
		for h, v := range map[string]string{"Origin": tc.origin, "Content-Type": tc.ctype, "Authorization": tc.auth} {
			if v != "" {
				req.Header.Set(h, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("TCP API, %s: status %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}

	get := func() (string, int64) {
		r, err := cli.Get(context.Background(), "/workersd/v1/", clientv3.WithPrefix())
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("keys: %v %v", r, err)
		}
		return string(r.Kvs[0].Key), r.Kvs[0].Lease
	}
	key, lease := get()
	if c := stop(); c != 0 {
		t.Fatalf("exit code %d:\n%s", c, logs)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
	if k, l := get(); k != key || l != lease {
		t.Fatal("a graceful stop revoked the registration")
	}
	start(t, args...)
	// Throughout, and beyond the old lease's TTL: the same single key on
	// the same lease (get fails on a second key).
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if k, l := get(); k != key || l != lease {
			t.Fatalf("after restart %s lease %x, want %s lease %x", k, l, key, lease)
		}
	}
}

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--listen.socket=", "--listen.address=10.1.2.3:9589"}, "not a loopback address"},
		{[]string{"--listen.socket=", "--listen.address="}, "unreachable"},
		{[]string{"--listen.address=127.0.0.1:9589"}, "needs --listen.token-file"},
		{[]string{"--listen.address=127.0.0.1:9589", "--listen.token-file=/nonexistent/token"}, "--listen.token-file"},
		{[]string{"--allow-address=10.0.0.1"}, "CIDR"},
		{[]string{"--max-per-user=0"}, "below 1"},
		{[]string{"--ttl=1s"}, "below etcd's minimum"},
		{[]string{"--host=a/b"}, "'/'"},
		{[]string{"--etcd.prefix=workersd"}, "start and end"},
	} {
		var out bytes.Buffer
		if code := run(context.Background(), tc.args, &out, nil); code != 2 || !strings.Contains(out.String(), tc.msg) {
			t.Errorf("%v: exit %d, output %q, want 2 and %q", tc.args, code, out.String(), tc.msg)
		}
	}
}
