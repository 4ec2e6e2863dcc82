//go:build unix

package atomicfile

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/workersd/workersd/internal/testing/filetest"
)

func TestWrite(t *testing.T) {
	old := syscall.Umask(0o077) // the mode must not depend on the umask
	defer syscall.Umask(old)

	dir := filepath.Join(t.TempDir(), "created", "on", "demand")
	path := filepath.Join(dir, "targets.json")
	if err := Write(path, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("[1]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	filetest.Check(t, path, "[1]\n", 0o644)
	if ents, _ := os.ReadDir(dir); len(ents) != 2 || ents[0].Name() != TempDir || ents[1].Name() != "targets.json" {
		t.Errorf("directory holds %v, want the file and %s", ents, TempDir)
	}
	if tmp := Temporaries(dir); len(tmp) != 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
	if err := Write(dir+"/", nil, 0o644); err == nil {
		t.Error("WriteFile to a directory name succeeded")
	}
	// Replace: the same, without the fsyncs.
	if err := Replace(path, []byte("[2]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	filetest.Check(t, path, "[2]\n", 0o644)
	if tmp := Temporaries(dir); len(tmp) != 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
}

// The temporary file must never match the glob Prometheus watches, and
// writing it must not touch the watched directory: file_sd reads every
// file again on each event there. One write is one event, the rename.
func TestWriteIsOneEventInTheDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "targets.json")
	if err := Write(path, []byte("[]\n"), 0o644); err != nil { // creates TempDir
		t.Fatal(err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := Write(path, bytes.Repeat([]byte("x"), 1<<20+i), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "sentinel"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var events []fsnotify.Event
	for {
		select {
		case ev := <-w.Events:
			if filepath.Base(ev.Name) == "sentinel" {
				// inotify may merge the renames of writes in quick succession.
				if len(events) == 0 || len(events) > 3 {
					t.Errorf("3 writes gave %d events in the directory, want 1 to 3 (the renames): %v", len(events), events)
				}
				return
			}
			events = append(events, ev)
			if ev.Name != path {
				t.Errorf("event %v in the watched directory", ev)
			}
		case err := <-w.Errors:
			t.Fatal(err)
		case <-time.After(10 * time.Second):
			t.Fatalf("no sentinel event; events: %v", events)
		}
	}
}

func TestWriteFailureLeavesPrevious(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "targets.json")
	if err := Write(path, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("disk full", func(t *testing.T) {
		filetest.LimitSize(t, filetest.MinSize)
		if err := Write(path, bytes.Repeat([]byte("x"), 2*filetest.MinSize), 0o644); err == nil {
			t.Fatal("write beyond the file size limit succeeded")
		}
	})
	t.Run("read-only directory", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root writes to read-only directories")
		}
		os.Chmod(dir, 0o555)
		defer os.Chmod(dir, 0o755)
		if err := Write(path, []byte("[1]\n"), 0o644); err == nil {
			t.Fatal("write into a read-only directory succeeded")
		}
	})
	filetest.Check(t, path, "[]\n", 0o644)
	if tmp := Temporaries(dir); len(tmp) != 0 {
		t.Errorf("a failed write left %v", tmp)
	}
}

// Issue 12, finding 1: `sdwriter --output.file=/dev/null` as root replaced
// the device with a regular file. Nothing but a regular file is replaced;
// the nodes are the test's own, in its temporary directory.
func TestWriteRefusesWhatIsNotARegularFile(t *testing.T) {
	dir := t.TempDir()
	nodes := map[string]func(string) error{
		"directory": func(p string) error { return os.Mkdir(p, 0o755) },
		"FIFO":      func(p string) error { return syscall.Mkfifo(p, 0o644) },
		"socket": func(p string) error {
			fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
			if err != nil {
				return err
			}
			defer syscall.Close(fd)
			return syscall.Bind(fd, &syscall.SockaddrUnix{Name: p})
		},
		"symbolic link": func(p string) error { return os.Symlink(filepath.Join(dir, "elsewhere"), p) },
	}
	if os.Geteuid() == 0 {
		// The character device 1:3, like /dev/null, made here.
		nodes["device"] = func(p string) error { return syscall.Mknod(p, syscall.S_IFCHR|0o666, 1<<8|3) }
	}
	for name, mk := range nodes {
		path := filepath.Join(dir, name)
		if err := mk(path); err != nil {
			t.Fatalf("make a %s: %v", name, err)
		}
		before, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		err = Write(path, []byte("[]\n"), 0o644)
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("Write over a %s: %v, want a refusal", name, err)
		}
		after, err := os.Lstat(path)
		if err != nil || after.Mode() != before.Mode() || !os.SameFile(before, after) {
			t.Errorf("the %s was replaced: %v -> %v (%v)", name, before.Mode(), after.Mode(), err)
		}
		if name != "symbolic link" {
			if _, err := Resolve(path); err == nil {
				t.Errorf("Resolve accepted a %s", name)
			}
		}
	}
}

// A symbolic link is followed on purpose: the file it points to is
// replaced, in its own directory, and the link stays a link.
func TestResolveFollowsSymlinks(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real", "targets.json")
	if err := Write(real, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	got, err := Resolve(link)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := filepath.EvalSymlinks(real)
	if got != want {
		t.Fatalf("Resolve(link) = %s, want %s", got, want)
	}
	if err := Write(got, []byte("[1]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(link); err != nil || string(b) != "[1]\n" {
		t.Fatalf("through the link: %q %v", b, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link is no longer a link: %v %v", fi.Mode(), err)
	}
	// A dangling link is an error, not a file created somewhere.
	dangling := filepath.Join(dir, "dangling.json")
	if err := os.Symlink(filepath.Join(dir, "nowhere", "x.json"), dangling); err != nil {
		t.Fatal(err)
	}
	if _, err := Resolve(dangling); err == nil {
		t.Fatal("Resolve followed a dangling link")
	}
	// Nothing there yet: the path itself.
	if got, err := Resolve(filepath.Join(dir, "new.json")); err != nil || got != filepath.Join(dir, "new.json") {
		t.Fatalf("Resolve(new) = %s, %v", got, err)
	}
}

// Issue 21: a writer killed between creating its temporary and renaming it
// left the temporary for ever (39 MB after 18 kill -9s during 3.5 MB
// writes). The next process's first write into the directory removes it,
// and keeps the temporary of a writer still at work in another process.
func TestStaleTemporariesAreRemoved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "targets.json")
	live := startWriter(t, path, "live")
	liveTmp := Temporaries(dir)
	// Its own first write cleans too, and keeps the live writer's.
	dead := startWriter(t, path, "dead")
	dead.Process.Kill()
	dead.Wait()
	if tmp := Temporaries(dir); len(tmp) != 2 || len(liveTmp) != 1 {
		t.Fatalf("temporaries before the write: %v, want the dead writer's and the live one's %v", tmp, liveTmp)
	}

	if err := Write(path, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	left := Temporaries(dir)
	if len(left) != 1 || !slices.Contains(liveTmp, left[0]) {
		t.Fatalf("temporaries after the first write: %v, want only the live writer's", left)
	}
	// The live writer finishes: its temporary was its own all along.
	live.stdin.Close()
	if err := live.Wait(); err != nil {
		t.Fatalf("the live writer: %v", err)
	}
	filetest.Check(t, path, "live\n", 0o644)
	if tmp := Temporaries(dir); len(tmp) != 0 {
		t.Fatalf("temporaries at the end: %v", tmp)
	}
}

// Clean keeps the temporary of a write in progress in this process too.
func TestCleanKeepsWritesInProgress(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	inRename, proceed := make(chan struct{}), make(chan struct{})
	testHookBeforeRename = func() { close(inRename); <-proceed }
	t.Cleanup(func() { testHookBeforeRename = nil })
	done := make(chan error, 1)
	go func() { done <- Write(path, []byte("{}\n"), 0o600) }()
	<-inRename
	removed, err := Clean(dir)
	if err != nil || len(removed) != 0 {
		t.Errorf("Clean during a write removed %v (%v)", removed, err)
	}
	close(proceed)
	if err := <-done; err != nil {
		t.Fatalf("the write: %v", err)
	}
	filetest.Check(t, path, "{}\n", 0o600)
	// What no writer owns goes; what is not a temporary stays.
	stale := filepath.Join(dir, TempDir, "state.json"+tmpInfix+"123")
	other := filepath.Join(dir, TempDir, "notes")
	for _, p := range []string{stale, other} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if removed, err := Clean(dir); err != nil || !slices.Equal(removed, []string{filepath.Base(stale)}) {
		t.Fatalf("Clean removed %v (%v), want the stale temporary alone", removed, err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("Clean removed what is not a temporary: %v", err)
	}
}

type writerProc struct {
	*exec.Cmd
	stdin io.WriteCloser
}

// startWriter runs this test binary as a writer of content to path that
// stops before its rename, until its standard input closes.
func startWriter(t *testing.T, path, content string) writerProc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^TestHelperWriter$")
	cmd.Env = append(os.Environ(), "ATOMICFILE_HELPER_PATH="+path, "ATOMICFILE_HELPER_CONTENT="+content)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "before rename\n" {
		t.Fatalf("writer %s: %q %v", content, line, err)
	}
	return writerProc{cmd, stdin}
}

// TestHelperWriter is the writer process of TestStaleTemporariesAreRemoved.
func TestHelperWriter(t *testing.T) {
	path := os.Getenv("ATOMICFILE_HELPER_PATH")
	if path == "" {
		t.Skip("helper process")
	}
	testHookBeforeRename = func() {
		fmt.Println("before rename")
		io.Copy(io.Discard, os.Stdin)
	}
	if err := Write(path, []byte(os.Getenv("ATOMICFILE_HELPER_CONTENT")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}
