package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
)

func TestConnectionFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--listen.read-timeout=0s"}, "--listen.read-timeout: 0s must be above 0s"},
		{[]string{"--listen.idle-timeout=-1s"}, "--listen.idle-timeout: -1s must be above 0s"},
		{[]string{"--listen.write-timeout=0s"}, "--listen.write-timeout: 0s must be above 0s"},
		{[]string{"--listen.write-timeout=200ms"}, "--listen.write-timeout: 200ms is below 1s"},
		{[]string{"--listen.read-timeout=ten"}, `--listen.read-timeout: "ten" is not a duration`},
		{[]string{"--listen.max-connections=many"}, `--listen.max-connections: "many" is not a whole number`},
		{[]string{"--listen.max-connections=0"}, "--listen.max-connections: 0 is below 1"},
		{[]string{"--listen.max-connections-per-caller=0"}, "--listen.max-connections-per-caller: 0 is below 1"},
		{[]string{"--listen.max-connections-per-caller=20", "--listen.max-connections=10"}, "20 is above --listen.max-connections (10)"},
	} {
		var out bytes.Buffer
		if code := run(context.Background(), tc.args, &out, nil); code != 2 || !strings.Contains(out.String(), tc.msg) {
			t.Errorf("%v: exit %d, output %q, want 2 and %q", tc.args, code, out.String(), tc.msg)
		}
	}
}

// The flags reach the socket: a caller over its limit has its connection
// closed at once, counted in the agent's metrics, while the connections
// it holds are closed after the idle timeout.
func TestConnectionLimitsApply(t *testing.T) {
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	web := etcdtest.FreeAddr(t)
	start(t, "--etcd.endpoints="+etcd.Endpoint(), "--host=web-1", "--listen.socket="+sock,
		"--state.file="+filepath.Join(dir, "agent.json"), "--web.listen-address="+web,
		"--listen.max-connections-per-caller=2", "--listen.idle-timeout=4s") // long enough for a loaded machine to read the metrics first
	// Two connections, each with one request answered, then idle.
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET /-/healthy HTTP/1.1\r\nHost: agent\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		if n, err := c.Read(buf); err != nil || !bytes.Contains(buf[:n], []byte("200 OK")) {
			t.Fatalf("first requests: %q %v", buf[:n], err)
		}
		held = append(held, c)
	}
	third, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := third.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a third connection of the same user: %v, want it closed at once", err)
	}
	metrics := func() string {
		resp, err := http.Get("http://" + web + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if m := metrics(); !strings.Contains(m, `workersd_agent_connections_refused_total{reason="caller_limit"} 1`) || !strings.Contains(m, "workersd_agent_connections 2") {
		t.Errorf("metrics lack the refusal and the 2 open connections:\n%s", m)
	}
	// The idle timeout closes what the user holds.
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("held connection: %v, want closed by the agent", err)
		}
		if d := time.Since(start); d > 6*time.Second {
			t.Errorf("held connection closed after %s, want about 4s", d)
		}
	}
	poll.Until(t, 5*time.Second, func() bool { return strings.Contains(metrics(), "workersd_agent_connections 0") }, "open connections not back to 0")
}
