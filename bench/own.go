package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/etcdsd"
	"github.com/workersd/workersd/internal/embedetcd"
	"github.com/workersd/workersd/internal/procstatus"
	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
	"github.com/workersd/workersd/worker"
)

type SizeResult struct {
	N        int     `json:"n"`
	SyncMs   float64 `json:"sync_ms"`   // new Discoverer+Syncer to file written, in this process
	RenderMs float64 `json:"render_ms"` // sdfile.Render of every group, median
	FileMiB  float64 `json:"file_mib"`
	HWMMB    float64 `json:"hwm_mb"`   // sdwriter binary, peak RSS after the first sync
	RSSMB    float64 `json:"rss_mb"`   // sdwriter binary, RSS then
	ReadyMs  float64 `json:"ready_ms"` // sdwriter binary, start to /-/ready
}

type OwnResult struct {
	TTL           string       `json:"ttl"`
	KillKeyMs     []float64    `json:"kill_key_ms"`  // SIGKILL to key deleted
	KillFileMs    []float64    `json:"kill_file_ms"` // SIGKILL to file without the target
	GracefulKey   []float64    `json:"graceful_key_ms"`
	GracefulFile  []float64    `json:"graceful_file_ms"`
	Sizes         []SizeResult `json:"sizes"`
	KAWorkers     int          `json:"ka_workers"`
	KAWindow      string       `json:"ka_window"`
	KAPerSecond   float64      `json:"ka_per_second"`
	KAPerWorkerS  float64      `json:"ka_per_worker_second"`
	KARegisterSec float64      `json:"ka_register_seconds"`
}

// childWorker is the bench binary re-executed as one application process
// embedding package worker; it prints its address once registered and
// waits to be killed.
func childWorker(endpoint, prefix string) {
	w, err := worker.Start(context.Background(), worker.Config{
		Job: "app", Host: "killed", EtcdEndpoints: []string{endpoint}, Prefix: prefix,
		ListenAddress: "127.0.0.1:0", Logger: hclog.NewNullLogger(),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	appMetrics(w.Registry(), 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitRegistered(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(w.Addr())
	select {}
}

// runKill: SIGKILL of worker processes (package worker, default TTL) to
// their targets gone from sdwriter's file.
func runKill(ctx context.Context, etcd *etcdMember, tmp string, n int, log func(string, ...any)) (keyMs, fileMs []float64, err error) {
	cli, err := etcd.Client()
	if err != nil {
		return nil, nil, err
	}
	defer cli.Close()
	prefix := "/workersd/kill/"
	fw, stop, err := watchedPipeline(cli, prefix, filepath.Join(tmp, "kill", "workersd.json"))
	if err != nil {
		return nil, nil, err
	}
	defer stop()
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	type child struct {
		cmd  *exec.Cmd
		addr string
	}
	var children []child
	defer func() {
		for _, c := range children {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	}()
	for range n {
		cmd := exec.Command(self, "-child-worker", etcd.Endpoint(), "-child-prefix", prefix)
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		line := make([]byte, 128)
		k, _ := out.Read(line)
		addr := strings.TrimSpace(string(line[:k]))
		if addr == "" {
			return nil, nil, fmt.Errorf("child worker printed no address")
		}
		children = append(children, child{cmd, addr})
		// Start them at different moments so that their keep-alives (every
		// TTL/3) are out of phase when they are killed.
		time.Sleep(time.Duration(1300/n) * time.Millisecond * 2)
	}
	if _, err := fw.wait(time.Minute, func(b []byte) bool {
		for _, c := range children {
			if !bytes.Contains(b, []byte(`"`+c.addr+`"`)) {
				return false
			}
		}
		return true
	}); err != nil {
		return nil, nil, err
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify())
	<-wch
	// Kill them one after the other, 1.1 s apart, so their keep-alives are
	// at different phases when they die.
	killed := make(chan [2]any, n)
	go func() {
		for _, c := range children {
			t := time.Now()
			fw.expectGone(`"`+c.addr+`"`, t)
			c.cmd.Process.Signal(syscall.SIGKILL)
			killed <- [2]any{c.addr, t}
			time.Sleep(1100 * time.Millisecond)
		}
	}()
	killedAt := map[string]time.Time{}
	deletedAt := map[string]time.Time{}
	deadline := time.After(time.Minute)
	for len(deletedAt) < n {
		select {
		case k := <-killed:
			killedAt[k[0].(string)] = k[1].(time.Time)
		case resp := <-wch:
			now := time.Now()
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypeDelete || ev.PrevKv == nil {
					continue
				}
				if v, err := registrar.DecodeValue(ev.PrevKv.Value); err == nil {
					deletedAt[v.Address] = now
				}
			}
		case <-deadline:
			return nil, nil, fmt.Errorf("keys not deleted within a minute")
		}
	}
	for len(killedAt) < n {
		k := <-killed
		killedAt[k[0].(string)] = k[1].(time.Time)
	}
	for addr, t := range deletedAt {
		keyMs = append(keyMs, ms(t.Sub(killedAt[addr])))
	}
	_, err = fw.wait(time.Minute, func(b []byte) bool { return bytes.Count(b, []byte(`"targets"`)) == 0 })
	if err != nil {
		return nil, nil, err
	}
	for _, c := range children {
		if d, ok := fw.removal(`"` + c.addr + `"`); ok {
			fileMs = append(fileMs, ms(d))
		}
	}
	if len(fileMs) != n {
		return nil, nil, fmt.Errorf("%d of %d removals seen in the file", len(fileMs), n)
	}
	log("kill -9 to removal: key %v ms, file %v ms", keyMs, fileMs)
	return sortedCopy(keyMs), sortedCopy(fileMs), nil
}

// runGraceful: Stop of a worker, a scrape that begins after it (the final
// scrape), then the time from that scrape's response to the key deleted
// and to the file without the target.
func runGraceful(ctx context.Context, etcd *etcdMember, tmp string, n int) (keyMs, fileMs []float64, err error) {
	cli, err := etcd.Client()
	if err != nil {
		return nil, nil, err
	}
	defer cli.Close()
	prefix := "/workersd/graceful/"
	fw, stop, err := watchedPipeline(cli, prefix, filepath.Join(tmp, "graceful", "workersd.json"))
	if err != nil {
		return nil, nil, err
	}
	defer stop()
	httpc := &http.Client{Timeout: 10 * time.Second}
	for i := range n {
		w, err := worker.Start(ctx, worker.Config{
			Job: "app", Host: "graceful", EtcdClient: cli, Prefix: prefix,
			ListenAddress: "127.0.0.1:0", FinalScrapeTimeout: new(5 * time.Second),
			Logger: hclog.NewNullLogger(),
		})
		if err != nil {
			return nil, nil, err
		}
		appMetrics(w.Registry(), i)
		needle := `"` + w.Addr() + `"`
		if _, err := fw.wait(30*time.Second, func(b []byte) bool { return bytes.Contains(b, []byte(needle)) }); err != nil {
			return nil, nil, err
		}
		key := w.Registration().Key
		wctx, wcancel := context.WithCancel(ctx)
		wch := cli.Watch(wctx, key, clientv3.WithCreatedNotify())
		<-wch
		stopped := make(chan error, 1)
		go func() { stopped <- w.Stop(ctx) }()
		<-w.Stopping()
		if _, _, err := scrape(httpc, "http://"+w.Addr()+worker.MetricsPath); err != nil {
			wcancel()
			return nil, nil, err
		}
		t0 := time.Now()
		fw.expectGone(needle, t0)
		ok := waitEvent(wch, clientv3.EventTypeDelete, 10*time.Second)
		tKey := time.Now()
		wcancel()
		if !ok {
			return nil, nil, fmt.Errorf("key %s not deleted after stop", key)
		}
		if err := <-stopped; err != nil {
			return nil, nil, err
		}
		if _, err := fw.wait(10*time.Second, func(b []byte) bool { return !bytes.Contains(b, []byte(needle)) }); err != nil {
			return nil, nil, err
		}
		d, _ := fw.removal(needle)
		keyMs = append(keyMs, ms(tKey.Sub(t0)))
		fileMs = append(fileMs, ms(d))
	}
	return sortedCopy(keyMs), sortedCopy(fileMs), nil
}

// runSizes: initial sync (in this process), render and the sdwriter
// binary's memory at each size.
func runSizes(ctx context.Context, etcd *etcdMember, tmp, sdwriterBin string, sizes []int, log func(string, ...any)) ([]SizeResult, error) {
	cli, err := etcd.Client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	var out []SizeResult
	for _, n := range sizes {
		prefix := fmt.Sprintf("/workersd/size%d/", n)
		if err := populate(ctx, cli, prefix, n); err != nil {
			return nil, err
		}
		r := SizeResult{N: n}
		file := filepath.Join(tmp, fmt.Sprintf("size-%d", n), "workersd.json")
		os.MkdirAll(filepath.Dir(file), 0o755)
		fw, err := watchFile(file)
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		stop, err := sdwriterPipeline(cli, prefix, file)
		if err != nil {
			fw.Close()
			return nil, err
		}
		b, err := fw.wait(5*time.Minute, func(b []byte) bool { return bytes.Count(b, []byte(`"targets"`)) == n })
		r.SyncMs = ms(time.Since(t0))
		stop()
		fw.Close()
		if err != nil {
			return nil, err
		}
		r.FileMiB = float64(len(b)) / (1 << 20)

		groups, err := collectGroups(ctx, cli, prefix, n)
		if err != nil {
			return nil, err
		}
		var renders []float64
		for range 5 {
			t := time.Now()
			sdfile.Render(groups)
			renders = append(renders, ms(time.Since(t)))
		}
		r.RenderMs = median(renders)

		if err := sdwriterRSS(etcd, sdwriterBin, prefix, filepath.Join(tmp, fmt.Sprintf("rss-%d", n)), n, &r); err != nil {
			return nil, err
		}
		if _, err := cli.Delete(ctx, prefix, clientv3.WithPrefix()); err != nil {
			return nil, err
		}
		out = append(out, r)
		log("%d registrations: sync %.0f ms, render %.1f ms, sdwriter peak RSS %.0f MB", n, r.SyncMs, r.RenderMs, r.HWMMB)
	}
	return out, nil
}

// collectGroups runs a Discoverer until it has reported n groups.
func collectGroups(ctx context.Context, cli *clientv3.Client, prefix string, n int) ([]*targetgroup.Group, error) {
	d, err := etcdsd.New(cli, etcdsd.Options{Prefix: prefix, Logger: hclog.NewNullLogger()})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	up := make(chan []*targetgroup.Group)
	done := make(chan struct{})
	go func() { d.Run(ctx, up); close(done) }()
	defer func() { cancel(); <-done }()
	bySource := map[string]*targetgroup.Group{}
	for len(bySource) < n {
		select {
		case gs := <-up:
			for _, g := range gs {
				bySource[g.Source] = g
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("collect groups: %d of %d", len(bySource), n)
		}
	}
	groups := make([]*targetgroup.Group, 0, n)
	for _, g := range bySource {
		groups = append(groups, g)
	}
	return groups, nil
}

func sdwriterRSS(etcd *etcdMember, bin, prefix, dir string, n int, r *SizeResult) error {
	os.MkdirAll(dir, 0o755)
	web, err := freeAddr()
	if err != nil {
		return err
	}
	file := filepath.Join(dir, "workersd.json")
	cmd := exec.Command(bin, "--etcd.endpoints="+etcd.Endpoint(), "--etcd.prefix="+prefix,
		"--output.file="+file, "--web.listen-address="+web, "--log.level=warn")
	cmd.Stderr = os.Stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	httpc := &http.Client{Timeout: time.Second}
	ready := until(5*time.Minute, 5*time.Millisecond, func() bool {
		resp, err := httpc.Get("http://" + web + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if !ready {
		return fmt.Errorf("sdwriter not ready")
	}
	r.ReadyMs = ms(time.Since(t0))
	if !until(time.Minute, 5*time.Millisecond, func() bool {
		b, err := os.ReadFile(file)
		return err == nil && bytes.Count(b, []byte(`"targets"`)) == n
	}) {
		return fmt.Errorf("sdwriter wrote no complete file")
	}
	hwm, err := procstatus.Bytes(cmd.Process.Pid, "VmHWM")
	if err != nil {
		return err
	}
	rss, err := procstatus.Bytes(cmd.Process.Pid, "VmRSS")
	if err != nil {
		return err
	}
	// MiB, as the report has always given them under "MB".
	r.HWMMB, r.RSSMB = float64(hwm)/(1<<20), float64(rss)/(1<<20)
	return nil
}

// runKeepAlive holds n registrations (default TTL) and counts the
// keep-alive requests etcd receives over window, from etcd's own gRPC
// server metrics (the embedded member registers them on the default
// registry of this process).
func runKeepAlive(ctx context.Context, etcd *etcdMember, n int, window time.Duration, res *OwnResult) error {
	var clients []*clientv3.Client
	var regs []*registrar.Registrar
	defer func() {
		for _, r := range regs {
			r.Deregister(context.Background())
		}
		for _, c := range clients {
			c.Close()
		}
	}()
	// Ten clients, as if ten processes of a hundred workers each shared
	// nothing but etcd; the request count is the same either way.
	for range 10 {
		c, err := etcd.Client()
		if err != nil {
			return err
		}
		clients = append(clients, c)
	}
	t0 := time.Now()
	for i := range n {
		r, err := registrar.New(registrar.Config{Client: clients[i%len(clients)], Prefix: "/workersd/ka/", Job: "ka", Host: fmt.Sprintf("h%d", i/100),
			Value: registrar.Value{Address: fmt.Sprintf("127.0.0.1:%d", 20000+i)}, Logger: hclog.NewNullLogger()})
		if err != nil {
			return err
		}
		r.Register(ctx)
		regs = append(regs, r)
	}
	for _, r := range regs {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := r.WaitRegistered(wctx)
		cancel()
		if err != nil {
			return err
		}
	}
	res.KARegisterSec = time.Since(t0).Seconds()
	before, err := embedetcd.KeepAlivesReceived()
	if err != nil {
		return err
	}
	time.Sleep(window) // the measurement window itself
	after, err := embedetcd.KeepAlivesReceived()
	if err != nil {
		return err
	}
	res.KAWorkers, res.KAWindow = n, window.String()
	res.KAPerSecond = (after - before) / window.Seconds()
	res.KAPerWorkerS = res.KAPerSecond / float64(n)
	return nil
}
