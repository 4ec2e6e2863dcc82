//go:build linux

package gunicorn

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.yaml.in/yaml/v2"

	"github.com/workersd/workersd/internal/embedetcd"
	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/promtest"
	"github.com/workersd/workersd/internal/testing/servertest"
)

// deploy is deploy/kubernetes, from this package's directory.
const deploy = "../../deploy/kubernetes"

// The example pod of deploy/kubernetes as the cluster overlay applies it
// (deploy/kubernetes/built/cluster.yaml), simulated with Linux namespaces:
// a network namespace with the pod's IP on a veth pair, a pause process as
// pid 1 of a PID namespace that the agent sidecar and gunicorn (4 workers,
// recycled by max_requests) share, a directory as each volume, the
// downward API's values where the manifest asks for them. Each container
// runs the manifest's command, arguments and environment as the pod's
// runAsUser and runAsGroup; the test changes only where etcd is, the
// volumes' paths, gunicorn's max_requests (30, to recycle within the test)
// and Prometheus' intervals. Outside the pod: etcd (one member) set up by
// the overlay's setup-auth.sh (the agent logs in as the Deployment's user,
// sdwriter as its read-only one), sdwriter with its Deployment's
// arguments, Prometheus 3.15 reading sdwriter through the overlay's http_sd
// job.
//
// Checks: 4 targets on the pod's IP; a second pod of the Deployment has
// instances of its own; totals exact in Prometheus' raw samples across the
// recycling; the second pod's network cut (a lost node): its targets gone
// within the lease TTL; the first pod deleted in Kubernetes' order (SIGTERM
// to gunicorn, then to the sidecar once gunicorn has exited): totals still
// exact and no target of it left 1 s after the agent exits.
func TestGunicornPod(t *testing.T) {
	const ttl = 10 * time.Second // the agent's default, which the manifest keeps
	s := startPodStack(t, "cluster")
	pod1 := s.start(s.net.add(t), "example-gunicorn-7d9f8c6b5-x2x4q")
	first := waitPodTargets(t, s.sd, pod1, 4, 60*time.Second)
	pod2 := s.start(s.net.add(t), "example-gunicorn-7d9f8c6b5-k8m2p")
	second := waitPodTargets(t, s.sd, pod2, 4, 60*time.Second)
	for inst := range second {
		if first[inst] != "" {
			t.Errorf("instance %s in both pods", inst)
		}
	}
	t.Logf("pod 1: %v; pod 2: %v", sortedKeys(first), sortedKeys(second))

	load := s.drive(pod1, 360)
	if load.lifetimes < 4+4 {
		t.Errorf("%d worker lifetimes: max_requests did not recycle the workers", load.lifetimes)
	}
	s.checkTotals(load, "after the recycling")

	// A lost node: pod 2's network goes; its registrations expire with the
	// agent's lease.
	if out, err := exec.Command(s.ip, "-n", pod2.netns, "link", "set", "eth0", "down").CombinedOutput(); err != nil {
		t.Fatalf("cut pod 2's network: %v %s", err, out)
	}
	gone := poll.Until(t, ttl+5*time.Second, func() bool { return len(podTargets(t, s.sd, pod2)) == 0 },
		"pod 2's targets still served after its network was cut")
	t.Logf("pod 2's network cut: its targets gone after %s (TTL %s)", gone.Round(10*time.Millisecond), ttl)
	if gone > ttl+2500*time.Millisecond {
		t.Errorf("pod 2's targets went %s after its network was cut, later than the TTL %s (with 2.5s for etcd's expiry check and sdwriter on a loaded machine)", gone, ttl)
	}

	// What the sidecar cost (docs/KUBERNETES.md), from its own metrics.
	agentFigures := scrapeValues(t, "http://"+pod1.ip+":9851/metrics", "process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds")
	t.Logf("the agent of pod 1: %.1f MB resident, %.2f s of CPU in %.0f s (4 workers, %d lifetimes)",
		agentFigures[1]/1e6, agentFigures[0], float64(time.Now().UnixNano())/1e9-agentFigures[2], strings.Count(pod1.app.Log(), "Booting worker with pid"))

	s.delete(pod1)
	s.checkTotals(load, "after pod 1's deletion")
}

// The same pod as the embedded overlay applies it
// (deploy/kubernetes/built/embedded.yaml): the agent registers in the
// embedded etcd of sdwriter's StatefulSet, without credentials. One pod:
// 4 targets on its IP, totals exact across recycling and after its
// deletion, no target 1 s after the agent exits.
func TestGunicornPodEmbedded(t *testing.T) {
	s := startPodStack(t, "embedded")
	p := s.start(s.net.add(t), "example-gunicorn-6b8d9c7f4-q7w2e")
	waitPodTargets(t, s.sd, p, 4, 60*time.Second)
	load := s.drive(p, 160)
	s.delete(p)
	s.checkTotals(load, "after the pod's deletion")
}

// podStack is what runs outside the pods, as an overlay sets it up.
type podStack struct {
	podRun
	net    *podNet
	sd     string // sdwriter's http_sd URL
	prom   *servertest.Prometheus
	job    string
	nodeIP string
}

// startPodStack starts etcd, sdwriter and Prometheus as deploy/kubernetes'
// overlay (cluster or embedded) describes them, on the node's end of the
// pods' veth pairs.
func startPodStack(t *testing.T, overlay string) *podStack {
	env := requireGunicorn(t)
	buildtest.RequireRoot(t, "network and PID namespaces")
	ipTool := buildtest.RequireTool(t, "ip", "apt-get install iproute2")
	built := readBuilt(t, overlay)
	app := built.find(t, "Deployment", "example-gunicorn")
	dir := t.TempDir()
	s := &podStack{
		podRun: podRun{t: t, dir: dir, app: app, env: env, ip: ipTool, maxRequests: 30,
			unshare: buildtest.RequireTool(t, "unshare", "apt-get install util-linux"),
			nsenter: buildtest.RequireTool(t, "nsenter", "apt-get install util-linux")},
		net: newPodNet(t, ipTool),
		job: envValue(t, app.container(t, "app"), "WORKERSD_JOB"),
	}
	// The node's address exists once a pair does: etcd listens on it.
	s.net.prepare(t)
	etcdAddr := s.net.nodeIP + ":" + freePort(t)
	s.etcd = "http://" + etcdAddr
	sdwAddr := "127.0.0.1:" + freePort(t)
	switch overlay {
	case "cluster":
		etcd, err := embedetcd.Start(embedetcd.Config{Dir: filepath.Join(dir, "etcd"), ClientAddr: etcdAddr, PeerAddr: "127.0.0.1:" + freePort(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(etcd.Close)
		s.passwords = filepath.Join(dir, "passwords")
		if err := os.Mkdir(s.passwords, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, user := range []string{"root", "sdwriter", "example-gunicorn"} {
			if err := os.WriteFile(filepath.Join(s.passwords, user), []byte(user+"-pw\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		// The job etcd-auth-setup: its script from its ConfigMap.
		etcdctl := buildtest.RequireTool(t, "etcdctl", "apt-get install etcd-client")
		script := filepath.Join(dir, "setup-auth.sh")
		if err := os.WriteFile(script, []byte(built.find(t, "ConfigMap", "etcd-auth-setup-").Data["setup-auth.sh"]), 0o755); err != nil {
			t.Fatal(err)
		}
		job := built.find(t, "Job", "etcd-auth-setup")
		setup := exec.Command("/bin/sh", script)
		setup.Env = append(os.Environ(), "ETCD_ENDPOINTS="+s.etcd, "PASSWORDS="+s.passwords,
			"WORKERSD_APPS="+envValue(t, job.container(t, "setup"), "WORKERSD_APPS"), "ETCDCTL_API=3", "PATH="+filepath.Dir(etcdctl)+":"+os.Getenv("PATH"))
		if out, err := setup.CombinedOutput(); err != nil {
			t.Fatalf("setup-auth.sh: %v\n%s", err, out)
		}
		checkEtcdScopes(t, s.etcd)
		args := built.find(t, "Deployment", "sdwriter").container(t, "sdwriter").Args
		args = replaceFlag(args, "--etcd.endpoints", s.etcd)
		args = replaceFlag(args, "--etcd.password-file", filepath.Join(s.passwords, "sdwriter"))
		args = replaceFlag(args, "--web.listen-address", sdwAddr)
		servertest.Run(t, dir, "sdwriter", nil, filepath.Join(env.bin, "sdwriter"), args...)
	case "embedded":
		args := built.find(t, "StatefulSet", "sdwriter").container(t, "sdwriter").Args
		args = replaceFlag(args, "--etcd.embed.listen-address", etcdAddr)
		args = replaceFlag(args, "--etcd.embed.data-dir", filepath.Join(dir, "sdwriter-etcd"))
		args = replaceFlag(args, "--web.listen-address", sdwAddr)
		args = append(args, "--etcd.embed.peer-address=127.0.0.1:"+freePort(t)) // its default, 2380, may be taken here
		servertest.Run(t, dir, "sdwriter", nil, filepath.Join(env.bin, "sdwriter"), args...)
	default:
		t.Fatalf("no stack for overlay %s", overlay)
	}
	s.sd = "http://" + sdwAddr + "/sd"
	poll.Until(t, 30*time.Second, func() bool {
		resp, err := http.Get("http://" + sdwAddr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "sdwriter is not ready")

	// Prometheus with the overlay's workers job, its intervals shortened.
	// (Its job for sdwriter's metrics discovers pods through an API server.)
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(built.find(t, "ConfigMap", "prometheus-workersd").Data["workersd-scrape.yml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	jobCfg := cfg["scrape_configs"].([]any)[0].(map[any]any)
	cfg["scrape_configs"] = []any{jobCfg}
	jobCfg["scrape_interval"] = "1s"
	httpSD := jobCfg["http_sd_configs"].([]any)[0].(map[any]any)
	if httpSD["url"] != "http://sdwriter.workersd.svc:9850/sd" {
		t.Fatalf("the scrape file reads %v, not sdwriter's Service", httpSD["url"])
	}
	httpSD["url"], httpSD["refresh_interval"] = s.sd, "1s"
	cfg["global"] = map[string]any{"evaluation_interval": "1s"}
	promCfg, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.prom = servertest.StartPrometheus(t, "prometheus", env.prom3, string(promCfg), "--enable-feature=created-timestamp-zero-ingestion")
	s.prom.Ready()
	return s
}

// load is what drive sent to a pod.
type load struct {
	requests, notFound int
	lifetimes          int
	began              time.Time
}

// drive sends n requests to p's gunicorn, one every 50ms, and waits until
// Prometheus has scraped every worker of p since the last.
func (s *podStack) drive(p *pod, n int) load {
	t := s.t
	t.Helper()
	l := load{requests: n, began: time.Now()}
	var ok int
	ok, l.notFound = servertest.DriveRequests(t, p.ip+":8000", n, 50*time.Millisecond)
	l.lifetimes = strings.Count(p.app.Log(), "Booting worker with pid")
	t.Logf("%d requests to %s (%d 200, %d 404); %d worker lifetimes", n, p.name, ok, l.notFound, l.lifetimes)
	lastRequest := time.Now()
	poll.Until(t, 40*time.Second, func() bool {
		cur := podTargets(t, s.sd, p)
		ss, err := promtest.RawSamples(s.prom.URL(), fmt.Sprintf(`up{job=%q,host=%q}`, s.job, p.name), time.Now().Add(-2*time.Second), time.Now())
		if err != nil {
			return false
		}
		fresh := 0
		for _, x := range ss {
			if last := x.Samples[len(x.Samples)-1]; last.T >= float64(lastRequest.UnixNano())/1e9+0.5 && last.V == 1 && cur[x.Metric["instance"]] != "" {
				fresh++
			}
		}
		return fresh == len(cur)
	}, "Prometheus did not scrape every worker of %s after the last request", p.name)
	return l
}

// checkTotals fails unless Prometheus' raw samples count exactly what l sent.
func (s *podStack) checkTotals(l load, when string) {
	t := s.t
	t.Helper()
	for sel, truth := range map[string]float64{
		fmt.Sprintf(`app_requests_total{job=%q}`, s.job):             float64(l.requests),
		fmt.Sprintf(`app_responses_total{job=%q,code="404"}`, s.job): float64(l.notFound),
	} {
		raw, _, err := promtest.Totals(s.prom.URL(), sel, l.began.Add(-time.Minute), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if raw != truth {
			t.Errorf("%s: %s: Prometheus' total of the raw samples %v, want exactly %v", when, sel, raw, truth)
			servertest.LogSeries(t, s.prom.URL(), sel, l.began.Add(-time.Minute), time.Now())
		} else {
			t.Logf("%s: %s = %v, exact", when, sel, raw)
		}
	}
}

// delete deletes p as the kubelet does: SIGTERM to the application; once
// it has exited, SIGTERM to the sidecar. 1 s after the agent's exit, no
// target of p is left, and every worker had its final scrape.
func (s *podStack) delete(p *pod) {
	t := s.t
	t.Helper()
	deleted := time.Now()
	syscall.Kill(p.appPid, syscall.SIGTERM) // nsenter passes no signal on: the container's process
	select {
	case <-p.app.Exited():
	case <-time.After(45 * time.Second): // the manifest's terminationGracePeriodSeconds
		t.Fatal("gunicorn did not exit within the pod's grace period")
	}
	appDone := time.Since(deleted)
	syscall.Kill(p.agentPid, syscall.SIGTERM)
	select {
	case <-p.agent.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not exit within 10s of SIGTERM")
	}
	agentDone := time.Now()
	t.Logf("%s deleted: gunicorn exited after %s, the agent %s after its SIGTERM", p.name, appDone.Round(10*time.Millisecond), agentDone.Sub(deleted.Add(appDone)).Round(time.Millisecond))
	time.Sleep(time.Until(agentDone.Add(time.Second)))
	if left := podTargets(t, s.sd, p); len(left) > 0 {
		t.Errorf("1s after the agent exited, %s still has targets %v", p.name, left)
	}
	if n := strings.Count(p.app.Log(), "no final scrape within"); n > 0 {
		t.Errorf("%d workers of %s exited without a final scrape", n, p.name)
	}
}

// checkEtcdScopes: after setup-auth.sh, authentication is on; the
// Deployment's user may write its pods' keys and slot holds, and neither
// another Deployment's nor another job's; sdwriter's may read, not write.
func checkEtcdScopes(t *testing.T, endpoint string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	as := func(user string) *clientv3.Client {
		t.Helper()
		c, err := etcdclient.New([]string{endpoint}, clientv3.Config{Username: user, Password: user + "-pw"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	anon, err := etcdclient.New([]string{endpoint}, clientv3.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.Put(ctx, "/workersd/v1/gunicorn-demo/example-gunicorn-a-b/0", "{}"); err == nil {
		t.Error("etcd accepts a write without credentials: authentication is off")
	}
	app, sdw := as("example-gunicorn"), as("sdwriter")
	for key, allowed := range map[string]bool{
		"/workersd/v1/gunicorn-demo/example-gunicorn-7d9f8c6b5-zzzzz/0":      true,
		"/workersd/v1.hold/gunicorn-demo/example-gunicorn-7d9f8c6b5-zzzzz/0": true,
		"/workersd/v1/gunicorn-demo/checkout-5c4d7b9f8-abcde/0":              false,
		"/workersd/v1/other-job/example-gunicorn-7d9f8c6b5-zzzzz/0":          false,
	} {
		_, err := app.Put(ctx, key, "{}")
		if allowed && err != nil {
			t.Errorf("the Deployment's user may not write %s: %v", key, err)
		} else if !allowed && err == nil {
			t.Errorf("the Deployment's user may write %s", key)
		}
		if err == nil {
			if _, err := app.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := sdw.Get(ctx, "/workersd/v1/", clientv3.WithPrefix()); err != nil {
		t.Errorf("sdwriter's user may not read the prefix: %v", err)
	}
	if _, err := sdw.Put(ctx, "/workersd/v1/gunicorn-demo/x/0", "{}"); err == nil {
		t.Error("sdwriter's user may write")
	}
}

// freePort is a free TCP port on loopback (free on any address then).
func freePort(t *testing.T) string {
	t.Helper()
	_, port, _ := strings.Cut(etcdtest.FreeAddr(t), ":")
	return port
}

// ---- the manifests ----

type k8sEnv struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		FieldRef *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
	} `yaml:"valueFrom"`
}

type k8sContainer struct {
	Name         string   `yaml:"name"`
	Command      []string `yaml:"command"`
	Args         []string `yaml:"args"`
	WorkingDir   string   `yaml:"workingDir"`
	Env          []k8sEnv `yaml:"env"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

// k8sWorkload is one object of a built overlay, the fields the test reads.
type k8sWorkload struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"` // a ConfigMap's
	Spec struct {
		Template struct {
			Spec struct {
				SecurityContext struct {
					RunAsUser  int `yaml:"runAsUser"`
					RunAsGroup int `yaml:"runAsGroup"`
					FSGroup    int `yaml:"fsGroup"`
				} `yaml:"securityContext"`
				InitContainers []k8sContainer `yaml:"initContainers"`
				Containers     []k8sContainer `yaml:"containers"`
				Volumes        []struct {
					Name     string    `yaml:"name"`
					EmptyDir *struct{} `yaml:"emptyDir"`
					Secret   *struct {
						Items []struct {
							Key  string `yaml:"key"`
							Path string `yaml:"path"`
						} `yaml:"items"`
					} `yaml:"secret"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func (w *k8sWorkload) container(t *testing.T, name string) k8sContainer {
	t.Helper()
	for _, c := range append(slices.Clone(w.Spec.Template.Spec.InitContainers), w.Spec.Template.Spec.Containers...) {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return k8sContainer{}
}

// built is an overlay as deploy/kubernetes/built/<overlay>.yaml has it:
// what kubectl apply -k applies, which deploy/kubernetes' tests keep so.
type built []*k8sWorkload

func readBuilt(t *testing.T, overlay string) built {
	t.Helper()
	path := filepath.Join(deploy, "built", overlay+".yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out built
	for _, doc := range strings.Split(string(b), "\n---\n") {
		w := &k8sWorkload{}
		if err := yaml.Unmarshal([]byte(doc), w); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, w)
	}
	return out
}

// find returns the object of kind whose name is name, or starts with it
// when it ends in "-" (a generated ConfigMap's hash suffix).
func (b built) find(t *testing.T, kind, name string) *k8sWorkload {
	t.Helper()
	for _, w := range b {
		if w.Kind == kind && (w.Metadata.Name == name || strings.HasSuffix(name, "-") && strings.HasPrefix(w.Metadata.Name, name)) {
			return w
		}
	}
	t.Fatalf("no %s %s in the built overlay", kind, name)
	return nil
}

func envValue(t *testing.T, c k8sContainer, name string) string {
	t.Helper()
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	t.Fatalf("container %s has no %s", c.Name, name)
	return ""
}

// replaceFlag sets --name=value in args, which must have it.
func replaceFlag(args []string, name, value string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		if strings.HasPrefix(a, name+"=") {
			out[i] = name + "=" + value
			return out
		}
	}
	panic(name + " is not in " + strings.Join(args, " "))
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// ---- the pods ----

// podNet is the node's side: a veth pair per pod, the node's end in this
// network namespace, the pod's in one of its own.
type podNet struct {
	ip       string
	nodeIP   string // the address of every pair's node end
	id       int
	prepared [][2]string
}

// podSeq numbers the pods of the test binary: their namespaces, links and
// IPs.
var podSeq atomic.Int32

func newPodNet(t *testing.T, ip string) *podNet {
	t.Helper()
	id := os.Getpid() % 50000
	return &podNet{ip: ip, nodeIP: fmt.Sprintf("10.79.%d.1", id%250), id: id}
}

// prepare makes a pod's network ahead, for the next add: the node's
// address exists from then on.
func (n *podNet) prepare(t *testing.T) {
	t.Helper()
	n.prepared = append(n.prepared, n.make(t))
}

// add returns a pod's network namespace and the pod's IP.
func (n *podNet) add(t *testing.T) [2]string {
	t.Helper()
	if len(n.prepared) > 0 {
		p := n.prepared[0]
		n.prepared = n.prepared[1:]
		return p
	}
	return n.make(t)
}

func (n *podNet) make(t *testing.T) [2]string {
	t.Helper()
	seq := int(podSeq.Add(1))
	ns := fmt.Sprintf("wsd-pod-%d-%d", n.id, seq)
	host := fmt.Sprintf("wsdp%d-%d", n.id, seq)
	podIP := fmt.Sprintf("10.79.%d.%d", n.id%250, 10+seq)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(n.ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() {
		exec.Command(n.ip, "link", "del", host).Run()
		exec.Command(n.ip, "netns", "del", ns).Run()
	})
	run("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
	// The node's end: the node's address, and a route to this pod.
	run("addr", "add", n.nodeIP+"/32", "dev", host)
	run("link", "set", host, "up")
	run("route", "add", podIP+"/32", "dev", host, "src", n.nodeIP)
	run("-n", ns, "link", "set", "lo", "up")
	run("-n", ns, "addr", "add", podIP+"/32", "dev", "eth0")
	run("-n", ns, "link", "set", "eth0", "up")
	run("-n", ns, "route", "add", n.nodeIP+"/32", "dev", "eth0")
	run("-n", ns, "route", "add", "default", "via", n.nodeIP, "dev", "eth0")
	return [2]string{ns, podIP}
}

type podRun struct {
	t           *testing.T
	dir         string
	app         *k8sWorkload // the Deployment
	env         gunicornEnv
	ip          string
	unshare     string
	nsenter     string
	passwords   string
	etcd        string
	maxRequests int
}

type pod struct {
	name, ip, netns  string
	pause            *servertest.Proc
	agent, app       *servertest.Proc
	agentPid, appPid int
}

// start runs a pod in netns: its pause process, then the agent sidecar,
// healthy, then gunicorn.
func (r podRun) start(netns [2]string, name string) *pod {
	t := r.t
	t.Helper()
	p := &pod{name: name, netns: netns[0], ip: netns[1]}
	dir := filepath.Join(r.dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The pod's volumes, as the kubelet makes them for its securityContext:
	// emptyDirs writable by all, a Secret's items readable (its defaultMode,
	// 0644), each owned by the fsGroup; the containers run as runAsUser and
	// runAsGroup, so the test's directories above must be open to them.
	sc := r.app.Spec.Template.Spec.SecurityContext
	volumes := map[string]string{}
	for _, v := range r.app.Spec.Template.Spec.Volumes {
		path := filepath.Join(dir, v.Name)
		volumes[v.Name] = path
		if err := os.Mkdir(path, 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case v.EmptyDir != nil:
			chown(t, path, sc.FSGroup, 0o777)
		case v.Secret != nil:
			chown(t, path, sc.FSGroup, 0o755)
			for _, it := range v.Secret.Items {
				b, err := os.ReadFile(filepath.Join(r.passwords, it.Key))
				if err != nil {
					t.Fatalf("volume %s: the Secret's %s: %v", v.Name, it.Key, err)
				}
				f := filepath.Join(path, it.Path)
				if err := os.WriteFile(f, b, 0o600); err != nil {
					t.Fatal(err)
				}
				chown(t, f, sc.FSGroup, 0o644)
			}
		default:
			t.Fatalf("volume %s: neither an emptyDir nor a Secret", v.Name)
		}
	}
	openUp(t, dir)
	openUp(t, r.env.bin)
	asUser := []string{"--setuid=" + strconv.Itoa(sc.RunAsUser), "--setgid=" + strconv.Itoa(sc.RunAsGroup)}
	if sc.RunAsUser == 0 || sc.RunAsGroup == 0 {
		t.Fatalf("the pod's securityContext sets no runAsUser and runAsGroup: %+v", sc)
	}

	p.pause = servertest.Run(t, dir, "pause", nil, r.ip, "netns", "exec", p.netns, r.unshare, "--pid", "--fork", "--mount-proc", "--kill-child", "sleep", "100000")
	pausePid := child(t, p.pause.Cmd.Process.Pid)
	facts := map[string]string{"metadata.name": name, "status.podIP": p.ip}

	agent := r.app.container(t, "workersd-agent")
	argv, env := r.resolve(t, agent, facts, volumes)
	argv = replaceFlag(argv, "--etcd.endpoints", r.etcd)
	argv[0] = filepath.Join(r.env.bin, argv[0])
	p.agent = servertest.Run(t, dir, "agent", env, r.nsenter, slices.Concat([]string{"--target", strconv.Itoa(pausePid), "--pid", "--mount", "--net"}, asUser, []string{"--"}, argv)...)
	p.agentPid = child(t, p.agent.Cmd.Process.Pid)
	// The startup probe: gunicorn starts once the agent is healthy.
	poll.Until(t, 30*time.Second, func() bool {
		resp, err := http.Get("http://" + p.ip + ":9851/-/healthy")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "the agent of %s is not healthy:\n%s", name, p.agent.Log())

	app := r.app.container(t, "app")
	argv, env = r.resolve(t, app, facts, volumes)
	env = append(env, "GUNICORN_MAX_REQUESTS="+strconv.Itoa(r.maxRequests))
	if argv[0] != "gunicorn" || app.WorkingDir != "/app" {
		t.Fatalf("the app container runs %v in %s, not gunicorn in /app, where the image has examples/gunicorn", argv, app.WorkingDir)
	}
	argv[0] = r.env.gunicorn
	wd, err := os.Getwd() // examples/gunicorn, the image's /app
	if err != nil {
		t.Fatal(err)
	}
	p.app = servertest.Run(t, dir, "app", env, r.nsenter, slices.Concat([]string{"--target", strconv.Itoa(pausePid), "--pid", "--mount", "--net", "--wd=" + wd}, asUser, []string{"--"}, argv)...)
	p.appPid = child(t, p.app.Cmd.Process.Pid)
	for _, pid := range []int{p.agentPid, p.appPid} {
		// /proc/<pid> belongs to the process's effective user, which
		// nsenter's child sets between its fork and its exec.
		var uid string
		poll.Until(t, 10*time.Second, func() bool {
			fi, err := os.Stat("/proc/" + strconv.Itoa(pid))
			if err != nil {
				uid = err.Error()
				return false
			}
			uid = strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid))
			return uid == strconv.Itoa(sc.RunAsUser)
		}, "process %d runs as uid %s, not the pod's runAsUser %d", pid, poll.Latest(&uid), sc.RunAsUser)
	}
	return p
}

// resolve is what the kubelet makes of a container: its command line with
// $(VAR) expanded from its environment, the environment with the downward
// API's values, and every path under a volume's mount moved to the
// volume's directory.
func (r podRun) resolve(t *testing.T, c k8sContainer, facts, volumes map[string]string) (argv, env []string) {
	t.Helper()
	vars := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			var ok bool
			if v, ok = facts[e.ValueFrom.FieldRef.FieldPath]; !ok {
				t.Fatalf("container %s: no value for %s", c.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		}
		vars[e.Name] = v
	}
	move := func(s string) string {
		for _, m := range c.VolumeMounts {
			dir, ok := volumes[m.Name]
			if !ok {
				t.Fatalf("container %s: volume %s unknown to the test", c.Name, m.Name)
			}
			if rest, ok := strings.CutPrefix(s, m.MountPath+"/"); ok {
				return filepath.Join(dir, rest)
			}
			if k, v, ok := strings.Cut(s, "="); ok && strings.HasPrefix(v, m.MountPath+"/") {
				return k + "=" + filepath.Join(dir, strings.TrimPrefix(v, m.MountPath+"/"))
			}
		}
		return s
	}
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		a = varRef.ReplaceAllStringFunc(a, func(ref string) string {
			v, ok := vars[varRef.FindStringSubmatch(ref)[1]]
			if !ok {
				t.Fatalf("container %s: %s is not in its environment", c.Name, ref)
			}
			return v
		})
		argv = append(argv, move(a))
	}
	for _, e := range c.Env {
		env = append(env, e.Name+"="+move(vars[e.Name]))
	}
	return argv, env
}

// chown gives path to group gid (user root) with mode.
func chown(t *testing.T, path string, gid int, mode os.FileMode) {
	t.Helper()
	if err := os.Chown(path, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// openUp lets every user through dir and the directories above it that the
// test created (t.TempDir makes them 0700), up to /tmp's.
func openUp(t *testing.T, dir string) {
	t.Helper()
	for d := dir; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// child returns the pid of pid's only child, once it has one.
func child(t *testing.T, pid int) int {
	t.Helper()
	var c int
	poll.Until(t, 10*time.Second, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err != nil {
			return false
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return false
		}
		c, err = strconv.Atoi(f[0])
		return err == nil
	}, "process %d has no child", pid)
	return c
}

// podTargets returns the targets sdwriter serves for pod p: instance ->
// address.
func podTargets(t *testing.T, sd string, p *pod) map[string]string {
	t.Helper()
	resp, err := http.Get(sd)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", sd, resp.Status) // only a starting sdwriter is not ready
	}
	var groups []servertest.Target
	if err := json.NewDecoder(resp.Body).Decode(&groups); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, g := range groups {
		if g.Labels["host"] == p.name {
			for _, a := range g.Targets {
				out[g.Labels["instance"]] = a
			}
		}
	}
	return out
}

// waitPodTargets waits until p has n targets, every one on its IP.
func waitPodTargets(t *testing.T, sd string, p *pod, n int, timeout time.Duration) map[string]string {
	t.Helper()
	var cur map[string]string
	poll.Until(t, timeout, func() bool {
		cur = podTargets(t, sd, p)
		return len(cur) == n
	}, "pod %s does not have %d targets; the agent:\n%s\ngunicorn:\n%s", p.name, n, p.agent.Log(), p.app.Log())
	for inst, addr := range cur {
		if !strings.HasPrefix(addr, p.ip+":") || !strings.HasPrefix(inst, p.name+"/") {
			t.Errorf("target %s at %s: not the pod's name and IP", inst, addr)
		}
	}
	return cur
}

// scrapeValues returns the values of the unlabelled metrics names at url.
func scrapeValues(t *testing.T, url string, names ...string) []float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float64, len(names))
	for i, n := range names {
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, n+" "); ok {
				if out[i], err = strconv.ParseFloat(v, 64); err != nil {
					t.Fatalf("%s: %q: %v", url, line, err)
				}
				found = true
			}
		}
		if !found {
			t.Fatalf("%s has no %s", url, n)
		}
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
