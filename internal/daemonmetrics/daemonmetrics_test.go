package daemonmetrics

import (
	"strings"
	"testing"
)

func TestNewRegistry(t *testing.T) {
	mfs, err := NewRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		name := mf.GetName()
		seen[name] = true
		switch {
		case name == "workersd_build_info", strings.HasPrefix(name, "go_"), strings.HasPrefix(name, "process_"):
		default:
			t.Errorf("unexpected series %s", name)
		}
	}
	for _, want := range []string{"workersd_build_info", "go_goroutines", "process_start_time_seconds"} {
		if !seen[want] {
			t.Errorf("no %s", want)
		}
	}
}
