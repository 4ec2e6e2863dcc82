package main

import "testing"

// The report copies figures from `go test` output; a change in that output
// must break this test, not silently empty a table.
func TestBenchLines(t *testing.T) {
	out := `goos: linux
BenchmarkInitialSync/10000-2         	       1	 174438290 ns/op	         2.859 file-MiB	65621168 B/op
BenchmarkRegistrationToFile-2   	    1000	   5123 ns/op	 2.37 register-p50-ms	 5.20 register-p99-ms
BenchmarkNoProcs 	 3	 12 ns/op
PASS`
	b := benchLines(out)
	if v, ok := bval(b, "BenchmarkInitialSync/10000", "file-MiB"); !ok || v != 2.859 {
		t.Errorf("file-MiB = %v, %v", v, ok)
	}
	if v, ok := bval(b, "BenchmarkRegistrationToFile", "register-p99-ms"); !ok || v != 5.20 {
		t.Errorf("register-p99-ms = %v, %v", v, ok)
	}
	if v, ok := bval(b, "BenchmarkNoProcs", "ns/op"); !ok || v != 12 {
		t.Errorf("ns/op = %v, %v", v, ok)
	}
}

func TestLoggedDurations(t *testing.T) {
	out := "    registrar_test.go:322: wiped (new cluster): all back 477.333392ms after etcd answered\n"
	m := logged(out, `wiped[^:\n]*: all back (\S+) after`)
	if m == nil || prettyDur(m[1]) != "477 ms" {
		t.Fatalf("got %q", m)
	}
}

func TestQuantile(t *testing.T) {
	v := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if q := quantile(v, 0.5); q != 5 {
		t.Errorf("p50 = %v", q)
	}
	if q := quantile(v, 0.99); q != 10 {
		t.Errorf("p99 = %v", q)
	}
	if q := quantile(v, 1); q != 10 {
		t.Errorf("max = %v", q)
	}
}
