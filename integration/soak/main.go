//go:build linux

package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/workersd/workersd/internal/procgroup"
)

// options are the command's flags; the outer process passes them on to
// the inner one.
type options struct {
	seed      int64
	duration  time.Duration
	binDir    string // sdwriter, workersd-agent, demoworker, etcdmember
	prom      string // Prometheus 3.15
	repo      string // the checkout: examples/gunicorn, clients/python
	runID     string // names the namespaces: wsdsoak<runID>-core, -a, -b
	workDir   string // inner only: logs, data
	inner     bool
	keepLogs  bool
	hardLimit time.Duration
}

func main() {
	var o options
	flag.Int64Var(&o.seed, "seed", 0, "seed of the fault schedule and the workload; 0: from the clock (printed)")
	flag.DurationVar(&o.duration, "duration", 3*time.Minute, "length of the fault phase (the run adds about a minute to start and to check)")
	flag.StringVar(&o.binDir, "bin-dir", "", "directory with sdwriter, workersd-agent, demoworker and etcdmember (scripts/soak builds them)")
	flag.StringVar(&o.prom, "prometheus", os.Getenv("WORKERSD_PROMETHEUS3"), "Prometheus 3.15 binary (scripts/prometheus)")
	flag.StringVar(&o.repo, "repo", "", "the workersd checkout (examples/gunicorn, clients/python); default: the working directory")
	flag.StringVar(&o.runID, "run-id", strconv.Itoa(os.Getpid()), "names the run's network namespaces: wsdsoak<id>-core, -a, -b")
	flag.BoolVar(&o.keepLogs, "keep-logs", false, "keep the run's directory (logs, data) also when it passes")
	flag.BoolVar(&o.inner, "inner", false, "internal: the run itself, inside the core namespace")
	flag.StringVar(&o.workDir, "work-dir", "", "internal: the run's directory")
	flag.Parse()
	o.hardLimit = o.duration + 8*time.Minute
	if o.inner {
		os.Exit(inner(o))
	}
	os.Exit(outer(o))
}

// names of the run's namespaces and links.
type topo struct{ core, a, b string }

func topology(runID string) topo {
	p := "wsdsoak" + runID
	return topo{core: p + "-core", a: p + "-a", b: p + "-b"}
}

// Addresses: the core namespace (etcd, sdwriter, Prometheus, the harness)
// has 10.77.0.1 on its loopback and a link hN (10.77.N+1.1/30) to each
// host, whose end is eth0 (10.77.N+1.2/30) with its default route back.
const coreIP = "10.77.0.1"

func hostIP(i int) string   { return fmt.Sprintf("10.77.%d.2", i+1) }
func hostPeer(i int) string { return fmt.Sprintf("10.77.%d.1", i+1) }
func hostLink(i int) string { return fmt.Sprintf("h%d", i) }

// outer checks what the run needs, makes the namespaces, runs the inner
// process in the core namespace and removes the namespaces whatever
// happens. It returns the exit code.
func outer(o options) int {
	if o.seed == 0 {
		o.seed = time.Now().UnixNano()%1_000_000_000 + 1
	}
	fmt.Printf("soak: seed %d, duration %s (replay: scripts/soak --seed %d --duration %s)\n", o.seed, o.duration, o.seed, o.duration)
	if err := preflight(&o); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	dir, err := os.MkdirTemp("", "workersd-soak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	o.workDir = dir
	t := topology(o.runID)
	defer teardown(t)
	if err := setup(t); err != nil {
		fmt.Fprintln(os.Stderr, "soak: network namespaces:", err)
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	args := []string{"netns", "exec", t.core, self, "--inner",
		"--seed=" + strconv.FormatInt(o.seed, 10), "--duration=" + o.duration.String(),
		"--bin-dir=" + o.binDir, "--prometheus=" + o.prom, "--repo=" + o.repo,
		"--run-id=" + o.runID, "--work-dir=" + o.workDir}
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = procgroup.Attr()
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	limit := time.NewTimer(o.hardLimit)
	defer limit.Stop()
	var werr error
	select {
	case werr = <-done:
	case s := <-sigs:
		fmt.Fprintf(os.Stderr, "soak: %s: stopping the run\n", s)
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case werr = <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			werr = <-done
		}
		werr = fmt.Errorf("interrupted (%s)", s)
	case <-limit.C:
		fmt.Fprintf(os.Stderr, "soak: the run did not end within %s: killed\n", o.hardLimit)
		cmd.Process.Kill()
		<-done
		werr = fmt.Errorf("over the hard limit %s", o.hardLimit)
	}
	code := 0
	if werr != nil {
		code = 1
		if ee, ok := werr.(*exec.ExitError); ok && ee.ExitCode() > 0 {
			code = ee.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "soak: FAILED (seed %d): %v; logs in %s\n", o.seed, werr, dir)
		return code
	}
	if o.keepLogs {
		fmt.Printf("soak: logs in %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	return 0
}

// preflight finds every component; a missing one fails the run (it is
// part of the suite: scripts/test installs them).
func preflight(o *options) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces, tc, a tmpfs mount): run it through scripts/soak")
	}
	if o.repo == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		o.repo = wd
	}
	var missing []string
	for _, tool := range []string{"ip", "tc", "mount", "umount", "gunicorn"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" (apt-get install iproute2 mount gunicorn)")
		}
	}
	for _, b := range []string{"sdwriter", "workersd-agent", "demoworker", "etcdmember"} {
		if o.binDir == "" {
			missing = append(missing, "--bin-dir")
			break
		}
		if _, err := os.Stat(filepath.Join(o.binDir, b)); err != nil {
			missing = append(missing, filepath.Join(o.binDir, b))
		}
	}
	if o.prom == "" {
		missing = append(missing, "Prometheus 3.15 (--prometheus or $WORKERSD_PROMETHEUS3; scripts/prometheus)")
	} else if _, err := os.Stat(o.prom); err != nil {
		missing = append(missing, o.prom)
	}
	if _, err := os.Stat(filepath.Join(o.repo, "examples", "gunicorn", "gunicorn.conf.py")); err != nil {
		missing = append(missing, "examples/gunicorn under --repo")
	}
	if g, err := exec.LookPath("gunicorn"); err == nil {
		py := interpreter(g)
		if out, err := exec.Command(py, "-c", "import prometheus_client").CombinedOutput(); err != nil {
			missing = append(missing, "python3-prometheus-client for "+py+": "+strings.TrimSpace(string(out)))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing: %s", strings.Join(missing, "; "))
	}
	return nil
}

// interpreter is the Python of a script's #! line.
func interpreter(script string) string {
	b, err := os.ReadFile(script)
	if err != nil {
		return "python3"
	}
	line, _, _ := strings.Cut(string(b), "\n")
	if f := strings.Fields(strings.TrimPrefix(line, "#!")); strings.HasPrefix(line, "#!") && len(f) > 0 {
		if filepath.Base(f[0]) == "env" && len(f) > 1 {
			return f[1]
		}
		return f[0]
	}
	return "python3"
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setup creates the core and two host namespaces and links each host to
// the core.
func setup(t topo) error {
	for _, ns := range []string{t.core, t.a, t.b} {
		if err := run("ip", "netns", "add", ns); err != nil {
			return err
		}
		if err := run("ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	if err := run("ip", "-n", t.core, "addr", "add", coreIP+"/32", "dev", "lo"); err != nil {
		return err
	}
	for i, ns := range []string{t.a, t.b} {
		cmds := [][]string{
			{"link", "add", hostLink(i), "netns", t.core, "type", "veth", "peer", "name", "eth0", "netns", ns},
			{"-n", t.core, "addr", "add", hostPeer(i) + "/30", "dev", hostLink(i)},
			{"-n", t.core, "link", "set", hostLink(i), "up"},
			{"-n", ns, "addr", "add", hostIP(i) + "/30", "dev", "eth0"},
			{"-n", ns, "link", "set", "eth0", "up"},
			{"-n", ns, "route", "add", "default", "via", hostPeer(i)},
		}
		for _, c := range cmds {
			if err := run("ip", c...); err != nil {
				return err
			}
		}
	}
	return nil
}

// teardown kills what still runs in the run's namespaces (processes the run
// started, by pid) and deletes them, with their links and qdiscs.
func teardown(t topo) {
	for _, ns := range []string{t.a, t.b, t.core} {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			continue
		}
		for range 50 {
			out, _ := exec.Command("ip", "netns", "pids", ns).Output()
			pids := strings.Fields(string(out))
			if len(pids) == 0 {
				break
			}
			for _, p := range pids {
				if pid, err := strconv.Atoi(p); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := run("ip", "netns", "del", ns); err != nil {
			fmt.Fprintln(os.Stderr, "soak: teardown:", err)
		}
	}
}
