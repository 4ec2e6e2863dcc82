package cliflags

import (
	"slices"
	"testing"
	"time"
)

func TestZeroIsOff(t *testing.T) {
	for _, c := range []struct {
		flag, want time.Duration
	}{
		{0, -1}, // off on the command line, off in a Config
		{time.Second, time.Second},
		{30 * time.Second, 30 * time.Second},
	} {
		if got, err := ZeroIsOff(c.flag); err != nil || got != c.want {
			t.Errorf("ZeroIsOff(%s) = %s, %v; want %s", c.flag, got, err, c.want)
		}
	}
	if _, err := ZeroIsOff(-time.Second); err == nil || err.Error() != "-1s is negative" {
		t.Errorf("ZeroIsOff(-1s): %v, want -1s is negative", err)
	}
}

func TestEndpoints(t *testing.T) {
	for in, want := range map[string][]string{
		"":                          nil,
		" , ":                       nil,
		"127.0.0.1:2379":            {"127.0.0.1:2379"},
		"etcd-1:2379, etcd-2:2379,": {"etcd-1:2379", "etcd-2:2379"},
	} {
		if got := Endpoints(in); !slices.Equal(got, want) {
			t.Errorf("Endpoints(%q) = %q, want %q", in, got, want)
		}
	}
}
