package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/documentation/examples/custom-sd/adapter"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/etcdsd"
)

// Phase is one pace of registrations, seen by both writers at once.
type Phase struct {
	Name      string    `json:"name"`
	Interval  string    `json:"interval"`
	Sdwriter  []float64 `json:"sdwriter_ms"` // sorted
	Adapter   []float64 `json:"adapter_ms"`  // sorted
	SdMissed  int       `json:"sdwriter_missed"`
	AdMissed  int       `json:"adapter_missed"`
	Timeout   string    `json:"timeout"`
	Registers int       `json:"registrations"`
}

type AdapterResult struct {
	Phases       []Phase `json:"phases"`
	SdMode       string  `json:"sdwriter_mode"`
	AdMode       string  `json:"adapter_mode"`
	SdIdentical  bool    `json:"sdwriter_identical"`
	AdIdentical  bool    `json:"adapter_identical"`
	IdentTargets int     `json:"identical_targets"`
	IdentRuns    int     `json:"identical_runs"`
	SdDistinct   int     `json:"sdwriter_distinct"`
	AdDistinct   int     `json:"adapter_distinct"`
}

// startAdapter runs Prometheus' custom-SD adapter fed by an etcdsd
// Discoverer reading prefix, writing file.
func startAdapter(cli *clientv3.Client, prefix, file string) (stop func(), err error) {
	disc, err := etcdsd.New(cli, etcdsd.Options{Prefix: prefix, Logger: hclog.NewNullLogger()})
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	sdMetrics, err := discovery.CreateAndRegisterSDMetrics(reg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := adapter.NewAdapter(ctx, file, "workersd", disc, slog.New(slog.NewTextHandler(io.Discard, nil)), sdMetrics, reg)
	a.Run()
	// The adapter owns no way to wait for its goroutines; the manager
	// closes its channel on cancel, which ends them.
	return cancel, nil
}

// runAdapter measures comparison 2.
func runAdapter(ctx context.Context, etcd *etcdMember, tmp string, quick bool, log func(string, ...any)) (*AdapterResult, error) {
	cli, err := etcd.Client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	res := &AdapterResult{}

	// Latency: both writers watch the same prefix; each registration is
	// timed from its Put to the first file of each writer holding it.
	prefix := "/workersd/latency/"
	if err := populate(ctx, cli, prefix, 100); err != nil {
		return nil, err
	}
	sdFile := filepath.Join(tmp, "sdwriter", "workersd.json")
	adFile := filepath.Join(tmp, "adapter", "workersd.json")
	for _, f := range []string{sdFile, adFile} {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return nil, err
		}
	}
	sdw, err := watchFile(sdFile)
	if err != nil {
		return nil, err
	}
	defer sdw.Close()
	adw, err := watchFile(adFile)
	if err != nil {
		return nil, err
	}
	defer adw.Close()
	stopSd, err := sdwriterPipeline(cli, prefix, sdFile)
	if err != nil {
		return nil, err
	}
	defer stopSd()
	stopAd, err := startAdapter(cli, prefix, adFile)
	if err != nil {
		return nil, err
	}
	defer stopAd()
	full := func(b []byte) bool { return bytes.Count(b, []byte(`"targets"`)) == 100 }
	if _, err := sdw.wait(time.Minute, full); err != nil {
		return nil, err
	}
	if _, err := adw.wait(time.Minute, full); err != nil {
		return nil, err
	}

	phases := []struct {
		name          string
		n             int
		every, jitter time.Duration
	}{
		{"rolling restart: one registration every 200 ms", 150, 200 * time.Millisecond, 100 * time.Millisecond},
		{"sparse: one registration every 3 s", 15, 3 * time.Second, time.Second},
	}
	if quick {
		phases[0].n, phases[1].n = 30, 4
	}
	seq := 0
	for _, ph := range phases {
		var needles []string
		for range ph.n {
			seq++
			addr := fmt.Sprintf(`"192.168.%d.%d:9100"`, seq/250, seq%250)
			key := fmt.Sprintf("%sapp/restart-%d/0", prefix, seq)
			needles = append(needles, addr)
			t0 := time.Now()
			sdw.expect(addr, t0)
			adw.expect(addr, t0)
			if _, err := cli.Put(ctx, key, regValue(strings.Trim(addr, `"`), seq)); err != nil {
				return nil, err
			}
			pause := ph.every - ph.jitter + time.Duration(rand.Int64N(int64(2*ph.jitter)))
			select {
			case <-time.After(pause):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		// Let the slowest writer catch up (the adapter's manager batches
		// updates for up to 5 s).
		timeout := 15 * time.Second
		last := needles[len(needles)-1]
		for _, w := range []*fileWatch{sdw, adw} {
			w.wait(timeout, func(b []byte) bool { return bytes.Contains(b, []byte(last)) })
		}
		p := Phase{Name: ph.name, Interval: fmt.Sprintf("%s ± %s", ph.every, ph.jitter), Registers: ph.n, Timeout: timeout.String()}
		p.Sdwriter, p.SdMissed = sdw.result(needles)
		p.Adapter, p.AdMissed = adw.result(needles)
		p.Sdwriter, p.Adapter = sortedCopy(p.Sdwriter), sortedCopy(p.Adapter)
		res.Phases = append(res.Phases, p)
		log("registration to file, %s: sdwriter p50 %.1f ms p99 %.1f ms; adapter p50 %.1f ms p99 %.1f ms",
			ph.name, quantile(p.Sdwriter, .5), quantile(p.Sdwriter, .99), quantile(p.Adapter, .5), quantile(p.Adapter, .99))
	}
	res.SdMode, res.AdMode = fileMode(sdFile), fileMode(adFile)

	// Determinism: the same registrations, read by a fresh writer several
	// times; are the files byte for byte the same?
	res.IdentTargets, res.IdentRuns = 200, 4
	ident := "/workersd/ident/"
	if err := populate(ctx, cli, ident, res.IdentTargets); err != nil {
		return nil, err
	}
	want := func(b []byte) bool { return bytes.Count(b, []byte(`"targets"`)) == res.IdentTargets }
	var sdOuts, adOuts [][]byte
	for run := range res.IdentRuns {
		for _, which := range []string{"sdwriter", "adapter"} {
			file := filepath.Join(tmp, fmt.Sprintf("ident-%s-%d", which, run), "out.json")
			os.MkdirAll(filepath.Dir(file), 0o755)
			fw, err := watchFile(file)
			if err != nil {
				return nil, err
			}
			start := startAdapter
			if which == "sdwriter" {
				start = sdwriterPipeline
			}
			stop, err := start(cli, ident, file)
			if err != nil {
				fw.Close()
				return nil, err
			}
			out, err := fw.wait(time.Minute, want)
			stop()
			fw.Close()
			if err != nil {
				return nil, err
			}
			if which == "sdwriter" {
				sdOuts = append(sdOuts, out)
			} else {
				adOuts = append(adOuts, out)
			}
		}
	}
	res.SdDistinct, res.AdDistinct = distinct(sdOuts), distinct(adOuts)
	res.SdIdentical, res.AdIdentical = res.SdDistinct == 1, res.AdDistinct == 1
	log("byte-identical over %d runs: sdwriter %d distinct file(s), adapter %d", res.IdentRuns, res.SdDistinct, res.AdDistinct)
	return res, nil
}

func distinct(outs [][]byte) int {
	seen := map[string]bool{}
	for _, o := range outs {
		seen[string(o)] = true
	}
	return len(seen)
}

func fileMode(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "missing: " + err.Error()
	}
	return fmt.Sprintf("%04o", fi.Mode().Perm())
}

var _ sync.Mutex
