//go:build linux

package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
)

// With 127.0.0.1:2379 and :2380 taken (a local etcd, another sdwriter),
// the demo says so, naming both, and exits non-zero at once: it starts
// nothing, so no worker of its own registers in the other etcd (issue 23,
// acceptance 5).
func TestDemoRefusesTakenEtcdPorts(t *testing.T) {
	bin := buildDemo(t)
	// Held for as short a time as can be: other tests (the README's
	// sdwriter in integration) run on these default ports.
	var held []net.Listener
	release := func() {
		for _, l := range held {
			l.Close()
		}
		held = nil
	}
	defer release()
	for _, a := range []string{"127.0.0.1:2379", "127.0.0.1:2380"} {
		l, err := net.Listen("tcp", a)
		switch {
		case err == nil:
			held = append(held, l)
		case errors.Is(err, syscall.EADDRINUSE):
			t.Logf("%s is already taken by another program: as the test needs", a)
		default:
			t.Fatal(err)
		}
	}
	work := filepath.Join(t.TempDir(), "work")
	d := startDemo(t, bin, work, // the etcd addresses are the defaults
		"--sdwriter.listen-address="+etcdtest.FreeAddr(t),
		"--prometheus.listen-address="+etcdtest.FreeAddr(t))
	took, err := d.wait(t, 30*time.Second)
	release()
	out := d.out.String()
	t.Logf("demo output (after %s):\n%s", took.Round(time.Millisecond), out)
	if code := exitCode(err); code == 0 {
		t.Errorf("demo exited %v, want non-zero", err)
	}
	if took > 10*time.Second {
		t.Errorf("demo took %s to refuse, want a prompt refusal", took)
	}
	for _, want := range []string{
		"127.0.0.1:2379 (the embedded etcd's client address, --etcd.listen-address) is in use",
		"127.0.0.1:2380 (the embedded etcd's peer address, --etcd.peer-address) is in use",
		"--etcd.listen-address=127.0.0.1:", // a suggestion of free ones
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	for _, unwanted := range []string{"sdwriter: embedded etcd on", "demoworker processes"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("output has %q: it started parts", unwanted)
		}
	}
	checkNoneLeft(t, work)
}

// The demo's sdwriter fails at start (here its etcd data directory is a
// file): the demo names it with its last log line and exits non-zero
// without starting a worker.
func TestDemoStopsWhenSdwriterFailsAtStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds sdwriter and demoworker and runs them")
	}
	bin := buildDemo(t)
	work := filepath.Join(t.TempDir(), "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "etcd"), []byte("not a directory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDemo(t, bin, work, append(freeAddrs(t), "--no-prometheus", "--workers=2")...)
	took, err := d.wait(t, 3*time.Minute) // the demo builds sdwriter and demoworker first
	out := d.out.String()
	t.Logf("demo output (after %s):\n%s", took.Round(time.Millisecond), out)
	if code := exitCode(err); code != 1 {
		t.Errorf("demo exited %v, want exit status 1", err)
	}
	if !strings.Contains(out, "sdwriter exited (exit status 1), stopping the demo; its last log line:") {
		t.Errorf("output does not say that sdwriter exited and how")
	}
	// The why: sdwriter's own last log line, the error it exited with.
	if !strings.Contains(out, "[ERROR] sdwriter: exiting:") {
		t.Errorf("output lacks sdwriter's last log line")
	}
	if strings.Contains(out, "demoworker processes") {
		t.Errorf("workers started with no sdwriter of the demo's own")
	}
	if _, err := os.Stat(filepath.Join(work, "w1.log")); err == nil {
		t.Errorf("a worker was started")
	}
	checkNoneLeft(t, work)
}

// A part the demo started exits while it runs (sdwriter killed, as by the
// OOM killer): the demo says which and why within a second or two, stops
// the workers and exits non-zero.
func TestDemoStopsWhenAPartExits(t *testing.T) {
	if testing.Short() {
		t.Skip("builds sdwriter and demoworker and runs them")
	}
	bin := buildDemo(t)
	work := filepath.Join(t.TempDir(), "work")
	d := startDemo(t, bin, work, append(freeAddrs(t), "--no-prometheus", "--workers=2", "--kill-after=0s", "--interval=500ms", "--ttl=2s")...)
	poll.Until(t, 3*time.Minute, func() bool { return strings.Contains(d.out.String(), "job demo: 2 targets") },
		"the demo never showed its 2 targets:\n%s", &d.out)
	sdwriter := pidOf(t, filepath.Join(work, "bin", "sdwriter"))
	if sdwriter == 0 {
		t.Fatal("no sdwriter process of the demo")
	}
	killed := time.Now()
	if err := syscall.Kill(sdwriter, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, err := d.wait(t, time.Minute)
	took := time.Since(killed)
	out := d.out.String()
	t.Logf("demo output (exit %s after the kill):\n%s", took.Round(time.Millisecond), out)
	if code := exitCode(err); code != 1 {
		t.Errorf("demo exited %v, want exit status 1", err)
	}
	if !strings.Contains(out, "sdwriter exited (signal: killed), stopping the demo; its last log line:\n  ") {
		t.Errorf("output does not say that sdwriter was killed")
	}
	// It noticed at once; what remains is stopping the workers (each gives
	// up its final scrape at once without Prometheus).
	if took > 15*time.Second {
		t.Errorf("the demo exited %s after its sdwriter was killed", took)
	}
	checkNoneLeft(t, work)
}

func buildDemo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := buildtest.Build(dir, "./examples/demo"); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "demo")
}

// freeAddrs gives every address of the demo a free port.
func freeAddrs(t *testing.T) []string {
	return []string{
		"--etcd.listen-address=" + etcdtest.FreeAddr(t),
		"--etcd.peer-address=" + etcdtest.FreeAddr(t),
		"--sdwriter.listen-address=" + etcdtest.FreeAddr(t),
		"--prometheus.listen-address=" + etcdtest.FreeAddr(t),
	}
}

type demo struct {
	cmd   *exec.Cmd
	out   syncBuffer
	begin time.Time
	done  chan error
}

// startDemo runs the demo with work as its work directory; the test's end
// kills it if it still runs (its children die with it: Pdeathsig).
func startDemo(t *testing.T, bin, work string, args ...string) *demo {
	t.Helper()
	d := &demo{done: make(chan error, 1)}
	d.cmd = exec.Command(bin, append([]string{"--work-dir=" + work}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = &d.out, &d.out
	d.begin = time.Now()
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Kill()
			<-d.done
		}
	})
	return d
}

// wait waits for the demo's exit, at most timeout (then it fails the test);
// it returns how long the demo ran and its exit error.
func (d *demo) wait(t *testing.T, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	select {
	case err := <-d.done:
		d.done <- err // for the cleanup
		return time.Since(d.begin), err
	case <-time.After(timeout):
		d.cmd.Process.Kill()
		t.Fatalf("the demo still runs after %s; output:\n%s", timeout, d.out.String())
		return 0, nil
	}
}

func exitCode(err error) int {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// pidOf is the process whose command is bin, 0 if none.
func pidOf(t *testing.T, bin string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if argv0, _, _ := bytes.Cut(b, []byte{0}); string(argv0) == bin {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	return 0
}

// checkNoneLeft fails the test if a process runs from the work directory.
func checkNoneLeft(t *testing.T, work string) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(work)) {
			t.Errorf("process left behind: %s: %s", p, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

// syncBuffer is a bytes.Buffer the demo writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
