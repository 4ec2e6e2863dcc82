package promcheck

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"path"
	"path/filepath"
	"strconv"
)

// Output is what sdwriter serves, and where, that Prometheus servers are
// checked against.
type Output struct {
	// Shards holds each shard's targets as sdwriter renders them (file_sd
	// JSON), in shard order: one entry without --output.shards.
	Shards [][]byte
	// Files are the files sdwriter writes, one per shard in shard order,
	// absolute paths as Prometheus' configuration names them. Optional:
	// empty when sdwriter writes no file.
	Files []string
	// SDPort is the port of sdwriter's /sd, to recognise http_sd URLs that
	// point at it (any host: Prometheus may know sdwriter by another name).
	// Optional: empty matches no http_sd URL.
	SDPort string
}

// target is one target of sdwriter's output, by the labels Prometheus
// discovers for it.
type target struct {
	labels map[string]string // __address__, __metrics_path__, instance, job, ...
}

// key identifies a target as Prometheus' targets API shows it: its address
// and metrics path (each worker has a path of its own).
func targetKey(labels map[string]string) string {
	p := labels["__metrics_path__"]
	if p == "" {
		p = "/metrics"
	}
	return labels["__address__"] + p
}

func (t target) String() string {
	return fmt.Sprintf("%s (job %s, instance %s)", targetKey(t.labels), t.labels["job"], t.labels["instance"])
}

// parseShard reads one shard's file_sd JSON.
func parseShard(b []byte) ([]target, error) {
	var groups []struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	if err := json.Unmarshal(b, &groups); err != nil {
		return nil, fmt.Errorf("sdwriter's output is not file_sd JSON: %w", err)
	}
	var ts []target
	for _, g := range groups {
		for _, a := range g.Targets {
			l := make(map[string]string, len(g.Labels)+1)
			for k, v := range g.Labels {
				l[k] = v
			}
			l["__address__"] = a
			ts = append(ts, target{labels: l})
		}
	}
	return ts, nil
}

// source is where a scrape job reads targets from sdwriter: a file_sd file
// pattern or an http_sd URL, and the shards of Output it matches.
type source struct {
	desc   string // the pattern or URL, as configured
	shards []int
}

// sources returns what job reads of out.
func (out Output) sources(sc *scrapeConfig) (srcs []source, err error) {
	for _, fsd := range sc.FileSD {
		for _, pattern := range fsd.Files {
			s := source{desc: pattern}
			for k, f := range out.Files {
				ok, err := filepath.Match(pattern, f)
				if err != nil {
					return nil, fmt.Errorf("job %s: file_sd pattern %q: %w", sc.JobName, pattern, err)
				}
				if ok {
					s.shards = append(s.shards, k)
				}
			}
			if len(s.shards) > 0 {
				srcs = append(srcs, s)
			}
		}
	}
	for _, hsd := range sc.HTTPSD {
		if k, ok := out.sdShard(hsd.URL); ok {
			srcs = append(srcs, source{desc: hsd.URL, shards: []int{k}})
		}
	}
	return srcs, nil
}

// sdShard says whether u is sdwriter's /sd, and which shard it asks for.
func (out Output) sdShard(u string) (int, bool) {
	if out.SDPort == "" {
		return 0, false
	}
	pu, err := url.Parse(u)
	if err != nil || path.Clean("/"+pu.Path) != "/sd" {
		return 0, false
	}
	port := pu.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[pu.Scheme]
	}
	if port != out.SDPort {
		return 0, false
	}
	s := pu.Query().Get("shard")
	if s == "" && len(out.Shards) == 1 {
		return 0, true
	}
	k, err := strconv.Atoi(s)
	if err != nil || k < 0 || k >= len(out.Shards) {
		return 0, false // sdwriter answers 400: Prometheus reads nothing
	}
	return k, true
}

// PortOf returns the port of a listen address such as ":9850" or
// "127.0.0.1:9850", for Output.SDPort.
func PortOf(listen string) string {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return ""
	}
	return port
}
