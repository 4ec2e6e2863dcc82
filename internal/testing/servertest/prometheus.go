//go:build linux

package servertest

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
)

// Prometheus is a Prometheus server a test runs: a real binary on a free
// loopback address, its configuration written by the test and reloaded
// through its API (--web.enable-lifecycle), killed when the test ends.
type Prometheus struct {
	t     testing.TB
	name  string
	bin   string
	flags []string
	dir   string
	addr  string
	proc  *Proc
}

// StartPrometheus runs bin with the configuration cfg and flags; it does
// not wait until the server is ready (Ready does), so that a test can start
// several at once. name names its log.
func StartPrometheus(t testing.TB, name, bin, cfg string, flags ...string) *Prometheus {
	t.Helper()
	s := &Prometheus{t: t, name: name, bin: bin, flags: flags, dir: t.TempDir(), addr: etcdtest.FreeAddr(t)}
	s.run(cfg)
	return s
}

func (s *Prometheus) run(cfg string) {
	s.t.Helper()
	s.write(cfg)
	s.proc = Run(s.t, s.dir, s.name, nil, s.bin, append([]string{
		"--config.file=" + s.ConfigFile(),
		"--storage.tsdb.path=" + filepath.Join(s.dir, "data"),
		"--web.listen-address=" + s.addr,
		"--web.enable-lifecycle",
	}, s.flags...)...)
}

// URL is the server's, http://127.0.0.1:<port>.
func (s *Prometheus) URL() string { return "http://" + s.addr }

// ConfigFile is the file it reads its configuration from.
func (s *Prometheus) ConfigFile() string { return filepath.Join(s.dir, "prometheus.yml") }

// Name is what Start named it.
func (s *Prometheus) Name() string { return s.name }

// Ready waits until the server answers /-/ready (401 too: its
// --web.config.file may want credentials), and fails the test after 60 s.
func (s *Prometheus) Ready() {
	s.t.Helper()
	poll.Until(s.t, 60*time.Second, func() bool {
		resp, err := http.Get(s.URL() + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized
	}, "Prometheus %s on %s not ready", s.name, s.addr)
}

// Reload makes the server load cfg, and fails the test if it refuses it.
func (s *Prometheus) Reload(cfg string) {
	s.t.Helper()
	s.write(cfg)
	resp, err := http.Post(s.URL()+"/-/reload", "", nil)
	if err != nil {
		s.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("Prometheus %s refused the configuration (%s):\n%s", s.name, resp.Status, cfg)
	}
}

// Stop kills the server.
func (s *Prometheus) Stop() { s.proc.Kill() }

// Restart runs the server again on the same address and data, with cfg
// and flags instead of its own, and waits until it is ready.
func (s *Prometheus) Restart(cfg string, flags ...string) {
	s.t.Helper()
	s.Stop()
	s.flags = flags
	s.run(cfg)
	s.Ready()
}

// Resume runs the stopped server again as it was, and waits until it is
// ready.
func (s *Prometheus) Resume(cfg string) { s.Restart(cfg, s.flags...) }

func (s *Prometheus) write(cfg string) {
	s.t.Helper()
	if err := os.WriteFile(s.ConfigFile(), []byte(cfg), 0o644); err != nil {
		s.t.Fatal(err)
	}
}
