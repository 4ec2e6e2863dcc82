package sdfile

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/workersd/workersd/internal/atomicfile"
	"github.com/workersd/workersd/internal/testing/filetest"
	"github.com/workersd/workersd/internal/testing/metrictest"
)

// waitOutput waits until the Syncer's output satisfies ok.
func waitOutput(t *testing.T, s *Syncer, ok func([]byte) bool) []byte {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		out, next := s.Output()
		if out != nil && ok(out) {
			return out
		}
		select {
		case <-next:
		case <-deadline:
			t.Fatalf("output never as expected; last:\n%s", out)
		}
	}
}

func startSyncer(t *testing.T, opts Options) *Syncer {
	t.Helper()
	s := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func get(t *testing.T, h http.Handler) (int, string, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/sd", nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, rec.Header().Get("Content-Type"), string(b)
}

func TestSyncer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sd", "targets.json")
	os.MkdirAll(filepath.Dir(path), 0o755)
	os.WriteFile(path, []byte("previous run\n"), 0o644)
	m := NewMetrics(nil)
	s := startSyncer(t, Options{File: path, Metrics: m})

	// Before the first update: no output, the previous file stays.
	if s.Ready() {
		t.Fatal("ready before any update")
	}
	if code, _, _ := get(t, s); code != http.StatusServiceUnavailable {
		t.Fatalf("/sd before the first update: %d, want 503", code)
	}
	filetest.Check(t, path, "previous run\n", FileMode)

	// The first update, even empty, is the complete set.
	s.Update(nil, time.Now())
	waitOutput(t, s, func(b []byte) bool { return string(b) == "[]\n" })
	filetest.Check(t, path, "[]\n", FileMode)
	if code, ct, body := get(t, s); code != 200 || ct != "application/json" || body != "[]\n" {
		t.Fatalf("/sd: %d %q %q", code, ct, body)
	}
	if !s.Ready() {
		t.Fatal("not ready after the first update")
	}

	g := group("/k/a", []string{"h:1"}, model.LabelSet{"job": "api"})
	s.Update([]*targetgroup.Group{g}, time.Now())
	out := waitOutput(t, s, func(b []byte) bool { return bytes.Contains(b, []byte("h:1")) })
	filetest.Check(t, path, string(out), FileMode)
	if _, _, body := get(t, s); body != string(out) {
		t.Errorf("/sd serves %q, the file holds %q", body, out)
	}
	if got, jobs := metrictest.Value(m.Targets), metrictest.Value(m.Jobs); got != 1 || jobs != 1 {
		t.Errorf("targets = %v, jobs = %v, want 1 and 1", got, jobs)
	}

	s.Update([]*targetgroup.Group{{Source: "/k/a"}}, time.Now())
	waitOutput(t, s, func(b []byte) bool { return string(b) == "[]\n" })
	filetest.Check(t, path, "[]\n", FileMode)
	if got, jobs := metrictest.Value(m.Targets), metrictest.Value(m.Jobs); got != 0 || jobs != 0 {
		t.Errorf("after the last target went: targets = %v, jobs = %v", got, jobs)
	}
	if got := metrictest.Value(m.Writes); got != 3 {
		t.Errorf("writes = %v, want 3", got)
	}
	var lat dto.Metric
	if err := m.Latency.Write(&lat); err != nil || lat.GetHistogram().GetSampleCount() < 1 {
		t.Errorf("event-to-file latency: %d observations (err %v), want at least one", lat.GetHistogram().GetSampleCount(), err)
	}
}

// Updates that arrive while the Syncer is busy are written once.
func TestSyncerCoalesces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.json")
	m := NewMetrics(nil)
	s := New(Options{File: path, Metrics: m})
	for i := range 1000 {
		s.Update([]*targetgroup.Group{group(fmt.Sprint(i), []string{fmt.Sprintf("h:%d", i+1)}, nil)}, time.Now())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	waitOutput(t, s, func(b []byte) bool { return bytes.Contains(b, []byte(`"h:1000"`)) })
	if got := metrictest.Value(m.Writes); got != 1 {
		t.Errorf("1000 queued updates took %v writes, want 1", got)
	}
}

// A failed write is counted, leaves the previous file, and is retried until
// it succeeds; /sd serves the new targets meanwhile.
func TestSyncerRetriesFailedWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.json")
	m := NewMetrics(nil)
	s := startSyncer(t, Options{File: path, Metrics: m, RetryInterval: 20 * time.Millisecond})
	s.Update(nil, time.Now())
	waitOutput(t, s, func(b []byte) bool { return string(b) == "[]\n" })

	// Enough targets to render beyond the size limit below.
	var groups []*targetgroup.Group
	for i := range 2 * filetest.MinSize / 50 {
		groups = append(groups, group(fmt.Sprint(i), []string{fmt.Sprintf("host-%d:%d", i, i+1)}, model.LabelSet{"job": "j"}))
	}
	t.Run("disk full", func(t *testing.T) {
		filetest.LimitSize(t, filetest.MinSize)
		s.Update(groups, time.Now())
		deadline := time.Now().Add(10 * time.Second)
		for metrictest.Value(m.WriteErrors) < 3 {
			if time.Now().After(deadline) {
				t.Fatalf("write errors = %v, want retries", metrictest.Value(m.WriteErrors))
			}
			_, next := s.Output()
			select {
			case <-next:
			case <-time.After(time.Until(deadline)):
			}
		}
		filetest.Check(t, path, "[]\n", FileMode)
		if _, _, body := get(t, s); !bytes.Contains([]byte(body), []byte("host-99")) {
			t.Errorf("/sd does not serve the new targets while the file cannot be written")
		}
	})
	// The limit is lifted: the next retry writes the file.
	want := Render(groups)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the file was not written after the failure ended")
		}
		_, next := s.Output()
		select {
		case <-next:
		case <-time.After(time.Second):
		}
	}
	filetest.Check(t, path, string(want), FileMode)
	if tmp := atomicfile.Temporaries(filepath.Dir(path)); len(tmp) != 0 {
		t.Errorf("failed writes left %v", tmp)
	}
}

// Without a file, the output is still rendered and served.
func TestSyncerWithoutFile(t *testing.T) {
	s := startSyncer(t, Options{})
	s.Update([]*targetgroup.Group{group("a", []string{"h:1"}, nil)}, time.Time{})
	waitOutput(t, s, func(b []byte) bool { return bytes.Contains(b, []byte("h:1")) })
	if code, _, _ := get(t, s); code != 200 {
		t.Fatalf("/sd: %d", code)
	}
}
