package hclogzap

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
)

func jsonLogger(buf *bytes.Buffer, level hclog.Level) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "test", Output: buf, JSONFormat: true, Level: level})
}

func lines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		out = append(out, m)
	}
	return out
}

// Warnings and errors reach hclog with their fields (from With and from
// the call), the logger's name and the right level; info and debug do not.
func TestForwardsWarningsAndErrorsWithFields(t *testing.T) {
	var buf bytes.Buffer
	lg := New(jsonLogger(&buf, hclog.Trace)).Named("etcdserver").With(zap.String("member", "8e9e05c52164694d"))
	lg.Debug("debug line")
	lg.Info("info line", zap.Int("n", 1))
	lg.Warn("quota exceeds the maximum value", zap.Int64("quota-size-bytes", 9<<30), zap.Duration("took", 1500*time.Millisecond))
	lg.Error("failed to defragment", zap.Error(errors.New("disk full")), zap.Strings("urls", []string{"a", "b"}))

	got := lines(t, &buf)
	if len(got) != 2 {
		t.Fatalf("%d lines, want the warning and the error only:\n%s", len(got), buf.String())
	}
	w, e := got[0], got[1]
	if w["@level"] != "warn" || w["@message"] != "quota exceeds the maximum value" || w["member"] != "8e9e05c52164694d" ||
		w["quota-size-bytes"] != float64(9<<30) || w["took"] != "1.5s" || w["logger"] != "etcdserver" {
		t.Errorf("warning: %v", w)
	}
	if e["@level"] != "error" || e["error"] != "disk full" || e["member"] != "8e9e05c52164694d" || e["urls"] != "[a b]" {
		t.Errorf("error: %v", e)
	}
}

// The hclog logger's own level still applies, and nil discards.
func TestLevelsAndNil(t *testing.T) {
	var buf bytes.Buffer
	lg := New(jsonLogger(&buf, hclog.Error))
	lg.Warn("filtered by hclog")
	lg.Error("kept")
	if got := lines(t, &buf); len(got) != 1 || got[0]["@message"] != "kept" {
		t.Errorf("with hclog at error: %v", got)
	}
	if New(nil).Core().Enabled(zap.ErrorLevel) {
		t.Error("a nil hclog logger gives a zap logger that logs")
	}
	New(nil).Error("discarded") // must not panic
	if NewCore(nil, zap.DebugLevel).Enabled(zap.ErrorLevel) {
		t.Error("NewCore(nil) logs")
	}
	// NewCore with a lower threshold passes info too.
	buf.Reset()
	zap.New(NewCore(jsonLogger(&buf, hclog.Info), zap.InfoLevel)).Info("info kept")
	if got := lines(t, &buf); len(got) != 1 || got[0]["@level"] != "info" {
		t.Errorf("info core: %v", got)
	}
}
