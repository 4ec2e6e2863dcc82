//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/poll"
)

// dashboard is what the test reads of examples/grafana/workersd.json: the
// fields Grafana needs to import a dashboard, and every query.
type dashboard struct {
	Title         string `json:"title"`
	UID           string `json:"uid"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Type string `json:"type"`
			Name string `json:"name"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		} `json:"datasource"`
		GridPos struct {
			H, W, X, Y int
		} `json:"gridPos"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// Issue 15, acceptance 3: the dashboard imports (the fields Grafana needs
// are there and consistent) and every query of every panel returns data
// from the end-to-end suite's Prometheus, which loads examples/rules.yml,
// while demo workers run on two hosts. A query that returns nothing fails.
func TestDashboardQueriesReturnData(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "examples", "grafana", "workersd.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("examples/grafana/workersd.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || d.SchemaVersion < 30 || len(d.Panels) == 0 {
		t.Fatalf("title %q, uid %q, schemaVersion %d, %d panels: not a dashboard Grafana imports", d.Title, d.UID, d.SchemaVersion, len(d.Panels))
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["job"] != "query" {
		t.Errorf("template variables %v, want a datasource variable and a job query", vars)
	}
	ids := map[int]bool{}
	var queries []string
	for _, p := range d.Panels {
		if p.ID == 0 || ids[p.ID] || p.Type == "" || p.Title == "" || p.GridPos.W == 0 || p.GridPos.H == 0 ||
			p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %d %q: id, type, title, size or Prometheus data source missing", p.ID, p.Title)
		}
		ids[p.ID] = true
		for _, tg := range p.Targets {
			if tg.RefID == "" || tg.Expr == "" {
				t.Errorf("panel %q: a target without refId or expr", p.Title)
			}
			queries = append(queries, tg.Expr)
		}
	}

	e := newEnv(t)
	for i := range 4 {
		e.startWorker(workerOpts{job: "demo", host: fmt.Sprintf("h%d", i%2), rate: 20})
	}
	// Grafana's variables, as a user who picked job "demo" would send them.
	expand := strings.NewReplacer(`$job`, "demo", `$__rate_interval`, "15s")
	for _, q := range queries {
		q := expand.Replace(q)
		var last string
		poll.Until(t, 90*time.Second, func() bool {
			ss, err := e.query(q, time.Time{})
			if err != nil {
				last = err.Error()
				return false
			}
			last = fmt.Sprintf("%d samples", len(ss))
			return len(ss) > 0
		}, "query %s returned no data (%s)", q, poll.Latest(&last))
	}
	t.Logf("%d panels, %d queries, each returned data", len(d.Panels), len(queries))
}
