//go:build linux

package procstatus

import (
	"os"
	"strings"
	"testing"
)

func TestBytes(t *testing.T) {
	pid := os.Getpid()
	hwm, err := Bytes(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	rss, err := Bytes(pid, "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	// A Go test binary takes megabytes; kB are 1024 bytes.
	for _, b := range []int64{hwm, rss} {
		if b < 1<<20 || b%1024 != 0 {
			t.Errorf("VmHWM %d, VmRSS %d bytes: want at least 1 MiB each, multiples of 1024", hwm, rss)
		}
	}
	if _, err := Bytes(pid, "Vm"); err == nil || !strings.Contains(err.Error(), "no Vm") {
		t.Errorf("a field that is not there: %v", err)
	}
	if _, err := Bytes(pid, "Name"); err == nil || !strings.Contains(err.Error(), "want a figure in kB") {
		t.Errorf("a field that is not a kB figure: %v", err)
	}
}
