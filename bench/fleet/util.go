package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// start starts cmd (its output in a log file beside the others) and, when
// line is set, waits for that line on its standard output.
func (b *bench) start(cmd *exec.Cmd, line string) (string, error) {
	log, err := os.Create(fmt.Sprintf("%s/%s-%d.log", b.tmp, baseName(cmd.Path), len(b.procs)))
	if err != nil {
		return "", err
	}
	cmd.Stderr = log
	var stdout *bufio.Scanner
	if line != "" {
		pipe, err := cmd.StdoutPipe()
		if err != nil {
			return "", err
		}
		stdout = bufio.NewScanner(pipe)
	} else {
		cmd.Stdout = log
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	b.procs = append(b.procs, cmd)
	if stdout == nil {
		return "", nil
	}
	found := make(chan string, 1)
	go func() {
		for stdout.Scan() {
			if strings.Contains(stdout.Text(), line) {
				found <- stdout.Text()
				for stdout.Scan() { // keep the pipe drained
				}
				return
			}
		}
		close(found)
	}()
	select {
	case l, ok := <-found:
		if !ok {
			return "", fmt.Errorf("%s exited before printing %q (log %s)", cmd.Path, line, log.Name())
		}
		return l, nil
	case <-time.After(2 * time.Minute):
		return "", fmt.Errorf("%s did not print %q within 2 minutes (log %s)", cmd.Path, line, log.Name())
	}
}

func baseName(p string) string { return p[strings.LastIndex(p, "/")+1:] }

// stopProc stops a process with SIGTERM, then SIGKILL after 10 s.
func stopProc(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func argValue(args []string, prefix string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, prefix); ok {
			return v
		}
	}
	return ""
}

// scrapeMetrics reads a Prometheus text exposition into series -> value,
// the series spelt as exposed (name{label="value",...}).
func scrapeMetrics(url string) (map[string]float64, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// cpuSeconds is the user and system CPU time of a process (every thread).
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which may hold spaces: state is 3rd.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// wchar is the bytes a process passed to write(2) and the like.
func wchar(pid int) float64 {
	return procField(fmt.Sprintf("/proc/%d/io", pid), "wchar:")
}

func procField(path, name string) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name); ok {
			f, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
			return f
		}
	}
	return 0
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func pctl(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// fileID tells the versions of a file apart.
type fileID struct {
	ino   uint64
	mtime time.Time
	size  int64
}

func idOf(fi os.FileInfo) fileID {
	return fileID{fi.Sys().(*syscall.Stat_t).Ino, fi.ModTime(), fi.Size()}
}
