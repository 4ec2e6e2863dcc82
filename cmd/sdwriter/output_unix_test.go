//go:build unix

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/etcdtest"
)

// Issue 12, finding 1: an output path that is not a regular file (here a
// FIFO the test makes) is refused at start, with the path and what it is,
// and left as it was.
func TestOutputThatIsNotARegularFileIsRefused(t *testing.T) {
	etcd := etcdtest.Start(t)
	fifo := filepath.Join(t.TempDir(), "targets.json")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if code := run(ctx, []string{"--etcd.endpoints=" + etcd.Endpoint(), "--output.file=" + fifo, "--web.listen-address=" + etcdtest.FreeAddr(t)}, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1; stderr: %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "not a regular file") || !strings.Contains(stderr.String(), "FIFO") {
		t.Errorf("no clear error: %q", stderr.String())
	}
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("the FIFO was replaced: %v %v", fi.Mode(), err)
	}
}
