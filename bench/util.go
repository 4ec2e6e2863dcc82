package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/workersd/workersd/etcdsd"
	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
)

// ms converts a duration to float milliseconds, the unit of every table.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// quantile of sorted values (nearest rank).
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted)) + 0.5)
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func sortedCopy(v []float64) []float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s
}

func median(v []float64) float64 { return quantile(sortedCopy(v), 0.5) }

// fileWatch reports, for each needle, when the file first held it: it reads
// the file after every rename into or write to its directory (inotify), so
// a sample costs no polling and misses no version of the file.
type fileWatch struct {
	path string
	f    *os.File

	mu      sync.Mutex
	pending map[string]time.Time // needle -> when the change was made
	seen    map[string]time.Duration
	gone    map[string]time.Time // needle -> when its removal was made
	removed map[string]time.Duration
	changed chan struct{} // closed and replaced after each read of the file
	last    []byte
	done    chan struct{}
}

func watchFile(path string) (*fileWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inotify watch %s: %w", filepath.Dir(path), err)
	}
	w := &fileWatch{
		path: path, f: os.NewFile(uintptr(fd), "inotify"),
		pending: map[string]time.Time{}, seen: map[string]time.Duration{},
		gone: map[string]time.Time{}, removed: map[string]time.Duration{},
		changed: make(chan struct{}), done: make(chan struct{}),
	}
	go w.loop()
	return w, nil
}

func (w *fileWatch) loop() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return // closed
		}
		now := time.Now()
		hit := false
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafePointer(&buf[off]))
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			hit = hit || name == filepath.Base(w.path)
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
		if hit {
			w.read(now)
		}
	}
}

func (w *fileWatch) read(now time.Time) {
	b, err := os.ReadFile(w.path)
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for needle, at := range w.pending {
		if bytes.Contains(b, []byte(needle)) {
			w.seen[needle] = now.Sub(at)
			delete(w.pending, needle)
		}
	}
	for needle, at := range w.gone {
		if !bytes.Contains(b, []byte(needle)) {
			w.removed[needle] = now.Sub(at)
			delete(w.gone, needle)
		}
	}
	w.last = b
	close(w.changed)
	w.changed = make(chan struct{})
}

// expect records that needle was added to etcd at t.
func (w *fileWatch) expect(needle string, t time.Time) {
	w.mu.Lock()
	w.pending[needle] = t
	w.mu.Unlock()
}

// expectGone records that needle was removed from etcd at t.
func (w *fileWatch) expectGone(needle string, t time.Time) {
	w.mu.Lock()
	w.gone[needle] = t
	w.mu.Unlock()
}

// wait blocks until ok holds for the file's content (checked after each
// change) or the timeout passes.
func (w *fileWatch) wait(timeout time.Duration, ok func([]byte) bool) ([]byte, error) {
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		last, ch := w.last, w.changed
		w.mu.Unlock()
		if last == nil {
			if b, err := os.ReadFile(w.path); err == nil {
				last = b
			}
		}
		if last != nil && ok(last) {
			return last, nil
		}
		select {
		case <-ch:
		case <-deadline:
			return nil, fmt.Errorf("%s: not as expected after %s", w.path, timeout)
		}
	}
}

// result returns the latency of every needle seen, and how many were not.
func (w *fileWatch) result(needles []string) (lat []float64, missed int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range needles {
		if d, ok := w.seen[n]; ok {
			lat = append(lat, ms(d))
		} else {
			missed++
		}
	}
	return lat, missed
}

func (w *fileWatch) removal(needle string) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	d, ok := w.removed[needle]
	return d, ok
}

func (w *fileWatch) Close() {
	w.f.Close()
	<-w.done
}

// sdwriterPipeline is sdwriter's core as cmd/sdwriter wires it: an etcdsd
// Discoverer feeding an sdfile Syncer that writes file.
func sdwriterPipeline(cli *clientv3.Client, prefix, file string) (stop func(), err error) {
	disc, err := etcdsd.New(cli, etcdsd.Options{Prefix: prefix, Logger: hclog.NewNullLogger()})
	if err != nil {
		return nil, err
	}
	syncer := sdfile.New(sdfile.Options{File: file})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { syncer.Run(ctx) })
	wg.Go(func() { disc.RunSink(ctx, syncer) })
	return func() { cancel(); wg.Wait() }, nil
}

// regValue is a registration as a registrar writes it.
func regValue(addr string, pid int) string {
	b, err := registrar.Value{
		Address:   addr,
		PID:       pid,
		StartedAt: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC),
		Labels:    map[string]string{"version": "1.4.2"},
	}.Encode()
	if err != nil {
		panic(err)
	}
	return string(b)
}

func benchAddr(i int) string {
	return fmt.Sprintf("10.%d.%d.%d:%d", 100+i>>16&127, i>>8&255, i&255, 20000+i%40000)
}

// populate writes n registrations under prefix in transactions of 100 puts.
func populate(ctx context.Context, cli *clientv3.Client, prefix string, n int) error {
	for start := 0; start < n; start += 100 {
		var ops []clientv3.Op
		for i := start; i < min(n, start+100); i++ {
			key := fmt.Sprintf("%sjob-%d/host-%d/%d", prefix, i%10, i/100, i%100)
			ops = append(ops, clientv3.OpPut(key, regValue(benchAddr(i), 1000+i)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("populate %d: %w", start, err)
		}
	}
	return nil
}

// until polls cond every interval until it holds or timeout passes.
func until(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}

// watchedPipeline runs sdwriter's pipeline for prefix into file and watches
// the file; stop ends both.
func watchedPipeline(cli *clientv3.Client, prefix, file string) (fw *fileWatch, stop func(), err error) {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return nil, nil, err
	}
	if fw, err = watchFile(file); err != nil {
		return nil, nil, err
	}
	stopPipeline, err := sdwriterPipeline(cli, prefix, file)
	if err != nil {
		fw.Close()
		return nil, nil, err
	}
	return fw, func() { stopPipeline(); fw.Close() }, nil
}
