package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
)

// The binary registers, processes exactly --jobs units, and on SIGTERM waits
// for a final scrape (which reads every unit) before it deregisters and exits.
func TestDemoworkerGracefulStop(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	dir := t.TempDir()
	if err := buildtest.Build(dir, "./examples/demoworker"); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "demoworker")
	cmd := exec.Command(bin, "--etcd.endpoints="+etcd.Endpoint(), "--job=dw", "--host=h",
		"--listen-address=127.0.0.1:0", "--jobs=1000", "--rate=0", "--job-duration=0s",
		"--final-scrape-timeout=1m", "--log.level=warn")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	if err != nil || !ok {
		t.Fatalf("first line %q, %v", line, err)
	}
	var path string // the registered metrics path, where Prometheus scrapes
	count := func() string {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "demo_jobs_processed_total "); ok {
				return v
			}
		}
		return ""
	}
	keys := func() int64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := cli.Get(ctx, "/workersd/v1/dw/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return -1
		}
		return r.Count
	}
	poll.Until(t, 30*time.Second, func() bool { return keys() == 1 }, "demoworker never registered")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := cli.Get(ctx, "/workersd/v1/dw/", clientv3.WithPrefix())
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("the registration: %v %v", r, err)
	}
	var v registrar.Value
	if err := json.Unmarshal(r.Kvs[0].Value, &v); err != nil || v.MetricsPath == "" {
		t.Fatalf("registered %s: %v; want a metrics path of its own", r.Kvs[0].Value, err)
	}
	path = v.MetricsPath
	poll.Until(t, 30*time.Second, func() bool { return count() == "1000" }, "never processed 1000 units")

	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Scrape as Prometheus would until the worker exits: the scrape that
	// begins after it saw SIGTERM is the final one, and every scrape,
	// that one included, reads all 1000 units while the key is in etcd.
	deadline := time.After(30 * time.Second)
	for exited := false; !exited; {
		registered := keys() == 1
		if got := count(); got != "" {
			if got != "1000" || !registered {
				t.Fatalf("scrape read %q with key registered=%v, want 1000 while registered", got, registered)
			}
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("exit: %v", err)
			}
			exited = true
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("no exit after SIGTERM and scrapes")
		}
	}
	if n := keys(); n != 0 {
		t.Fatalf("%d keys left after exit", n)
	}
}

// --slot-hold means what the agent's does: 0s is no hold (a stopped
// worker's slot is reused at once), the default holds the slot for
// registrar.DefaultSlotHold, and a negative value is refused (issue 23).
func TestSlotHold(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	dir := t.TempDir()
	if err := buildtest.Build(dir, "./examples/demoworker"); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "demoworker")
	const prefix = "/workersd/v1/"
	keys := func(p string) []string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range r.Kvs {
			out = append(out, string(kv.Key))
		}
		return out
	}
	// run starts a worker of job with the extra flags, waits for its
	// registration and returns its key, the job's holds, and a stop.
	run := func(job string, extra ...string) (key string, holds []string, stop func()) {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"--etcd.endpoints=" + etcd.Endpoint(), "--job=" + job, "--host=h",
			"--listen-address=127.0.0.1:0", "--jobs=1", "--rate=0", "--final-scrape-timeout=0s", "--log.level=warn"}, extra...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		stop = func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s worker exited: %v", job, err)
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Errorf("%s worker still running 30s after SIGTERM", job)
			}
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		var ks []string
		slots := registrar.Key{Prefix: prefix, Job: job, Host: "h"}
		poll.Until(t, 30*time.Second, func() bool { ks = keys(slots.SlotPrefix()); return len(ks) == 1 }, "%s worker never registered", job)
		return ks[0], keys(slots.HoldSlotPrefix()), stop
	}
	slot := func(key string) int {
		k, err := registrar.ParseKey(prefix, key)
		if err != nil {
			t.Fatal(err)
		}
		return k.Slot
	}

	// 0s: no hold key, and the next worker takes the slot at once.
	first, holds, stop := run("off", "--slot-hold=0s")
	if len(holds) != 0 {
		t.Errorf("--slot-hold=0s: holds %v, want none", holds)
	}
	stop()
	second, _, stop := run("off", "--slot-hold=0s")
	if slot(second) != slot(first) {
		t.Errorf("--slot-hold=0s: the next worker registered %s after %s stopped; want its slot, free at once", second, first)
	}
	stop()

	// The default: the slot is held, and the next worker takes another.
	first, holds, stop = run("held")
	if len(holds) != 1 {
		t.Errorf("default --slot-hold: holds %v, want the slot's", holds)
	}
	stop()
	second, _, stop = run("held")
	if slot(second) == slot(first) {
		t.Errorf("default --slot-hold: the next worker took %s's slot while it is held", first)
	}
	stop()

	// Negative: refused, naming the flag, as the agent does.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--etcd.endpoints="+etcd.Endpoint(), "--slot-hold=-1s").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "--slot-hold") {
		t.Errorf("--slot-hold=-1s: %v %q, want exit 2 naming the flag", err, out)
	}
}
