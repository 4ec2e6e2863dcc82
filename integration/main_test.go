//go:build linux

package integration

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/procgroup"
	"github.com/workersd/workersd/internal/testing/buildtest"
)

// binDir holds the binaries built once for the whole run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "workersd-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var build struct {
	once sync.Once
	err  error
	took time.Duration
}

// binaries builds sdwriter, demoworker and etcdmember (once per run) and
// returns the directory that holds them.
func binaries(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		start := time.Now()
		build.err = buildtest.Build(binDir, "./cmd/sdwriter", "./cmd/workersd-agent", "./examples/demoworker", "./integration/cmd/etcdmember")
		build.took = time.Since(start)
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return binDir
}

// endToEnd is the common start of every scenario.
func endToEnd(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end scenario; skipped with -short")
	}
	binaries(t)
}

// proc is a child process in its own process group, logged to a file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}

	mu    sync.Mutex
	lines []string      // standard output, line by line
	grew  chan struct{} // closed and replaced when a line arrives or stdout ends
	eof   bool
}

// startProc starts bin and kills its process group when the test ends.
// Standard output is kept for waitLine and, with standard error, written to
// a log file in dir that is printed when the test fails.
func startProc(t *testing.T, dir, name, bin string, args ...string) *proc {
	t.Helper()
	p, err := startProcErr(t, dir, name, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startProcErr is startProc for goroutines other than the test's.
func startProcErr(t *testing.T, dir, name, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logf
	// Own group: kill -9 reaches the whole process; no child outlives a
	// test binary that dies without its cleanups.
	cmd.SysProcAttr = procgroup.Attr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{}), grew: make(chan struct{})}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, "stdout: "+line)
			p.mu.Lock()
			p.lines = append(p.lines, line)
			close(p.grew)
			p.grew = make(chan struct{})
			p.mu.Unlock()
		}
		io.Copy(io.Discard, stdout)
		p.mu.Lock()
		p.eof = true
		close(p.grew)
		p.grew = make(chan struct{})
		p.mu.Unlock()
	}()
	go func() {
		<-copied // Wait closes the pipe: read it all first
		cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			tail(t, p)
		}
	})
	return p, nil
}

func tail(t *testing.T, p *proc) {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	t.Logf("---- last lines of %s (%s) ----\n%s", p.name, filepath.Base(p.logPath), strings.Join(lines, "\n"))
}

// waitLine waits for a line of standard output starting with prefix and
// returns the rest of it.
func (p *proc) waitLine(prefix string, timeout time.Duration) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := 0; ; {
		p.mu.Lock()
		for ; i < len(p.lines); i++ {
			if rest, ok := strings.CutPrefix(p.lines[i], prefix); ok {
				p.mu.Unlock()
				return strings.TrimSpace(rest), nil
			}
		}
		eof, grew := p.eof, p.grew
		p.mu.Unlock()
		if eof {
			<-p.done
			return "", fmt.Errorf("%s exited (%v) before printing %q; log %s", p.name, p.cmd.ProcessState, prefix, p.logPath)
		}
		select {
		case <-grew:
		case <-deadline.C:
			return "", fmt.Errorf("%s printed no %q within %s; log %s", p.name, prefix, timeout, p.logPath)
		}
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) signal(sig syscall.Signal) {
	if !p.exited() {
		procgroup.Signal(p.cmd.Process, sig)
	}
}

// kill sends SIGKILL to the process group and waits for the exit.
func (p *proc) kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// terminate sends SIGTERM and waits for the exit; after timeout it kills
// the process and reports that it had to.
func (p *proc) terminate(timeout time.Duration) error {
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if !p.cmd.ProcessState.Success() {
			return fmt.Errorf("%s: %v", p.name, p.cmd.ProcessState)
		}
		return nil
	case <-time.After(timeout):
		p.kill()
		return fmt.Errorf("%s did not stop within %s of SIGTERM; killed", p.name, timeout)
	}
}
