package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/etcdsd"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
)

// statusFixture is an sdwriter with valid registrations of two jobs, two
// malformed keys and two registrations of one address.
func statusFixture(t *testing.T) (*instance, *clientv3.Client) {
	t.Helper()
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	t.Chdir(t.TempDir()) // the page shows the output path as given
	file := "workersd.json"
	in := startSdwriter(t, file, "--etcd.endpoints="+etcd.Endpoint())
	started := time.Now().Add(-7 * time.Minute).Truncate(time.Second)
	for i, key := range []string{"api/web-1/0", "api/web-1/1", "api/web-2/0"} {
		v, err := registrar.Value{Address: fmt.Sprintf("10.0.0.%d:%d", 1+i/2, 9100+i%2), PID: 4100 + i, StartedAt: started,
			Labels: map[string]string{"version": "1.4.2"}}.Encode()
		if err != nil {
			t.Fatal(err)
		}
		put(t, cli, prefix+key, string(v))
	}
	putReg(t, cli, "batch/web-2/0", "10.0.0.2:9200")
	put(t, cli, prefix+"api/web-3/0", "{not json")
	put(t, cli, prefix+"api/web-3/1", `{"address":"10.0.0.3:1","labels":{"bad-name":"x"}}`)
	putReg(t, cli, "batch/web-2/1", "10.0.0.2:9100") // the address of api/web-2/0, later: it wins
	waitFile(t, file, "10.0.0.1:9100", "10.0.0.1:9101", "10.0.0.2:9200", "10.0.0.2:9100")
	return in, cli
}

func getStatus(t *testing.T, in *instance, query string) (int, report) {
	t.Helper()
	code, ct, body := httpGet("http://" + in.web + "/api/v1/status" + query)
	var r report
	if code == http.StatusOK {
		if ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatalf("%v in %s", err, body)
		}
	}
	return code, r
}

// Issue 15: /api/v1/status says what sdwriter sees: every registration by
// job (paged, filtered), each rejected key with the exact reason, each
// dropped duplicate with the key that won, etcd and the output.
func TestStatusJSON(t *testing.T) {
	in, _ := statusFixture(t)
	var r report
	poll.Until(t, 10*time.Second, func() bool {
		_, r = getStatus(t, in, "")
		return r.Discovery.RejectedTotal == 2 && r.Discovery.DuplicatesTotal == 1 && !r.Output.LastWrite.IsZero()
	}, "status with 2 rejected keys and 1 duplicate")
	d := r.Discovery
	if !r.Etcd.Reachable || !d.Synced || d.Registrations != 5 || d.Targets != 4 || d.Matching != 5 || len(d.Page) != 5 {
		t.Errorf("reachable %v, synced %v, %d registrations, %d targets, %d matching, page of %d; want true, true, 5, 4, 5, 5",
			r.Etcd.Reachable, d.Synced, d.Registrations, d.Targets, d.Matching, len(d.Page))
	}
	if want := []etcdsd.JobSummary{{Job: "api", Registrations: 3, Hosts: 2}, {Job: "batch", Registrations: 2, Hosts: 1}}; !equalJSON(d.Jobs, want) {
		t.Errorf("jobs %+v, want %+v", d.Jobs, want)
	}
	if len(d.Rejected) != 2 || d.Rejected[0].Key != prefix+"api/web-3/0" || d.Rejected[0].Reason != "value" ||
		!strings.Contains(d.Rejected[0].Error, "invalid JSON") ||
		d.Rejected[1].Reason != "labels" || !strings.Contains(d.Rejected[1].Error, "bad-name") {
		t.Errorf("rejected %+v", d.Rejected)
	}
	if len(d.Duplicates) != 1 || d.Duplicates[0].Dropped != prefix+"api/web-2/0" || d.Duplicates[0].Winner != prefix+"batch/web-2/1" || d.Duplicates[0].Address != "10.0.0.2:9100" {
		t.Errorf("duplicates %+v", d.Duplicates)
	}
	if p := d.Page[0]; p.Key != prefix+"api/web-1/0" || p.Job != "api" || p.Host != "web-1" || p.Slot != 0 || p.Address != "10.0.0.1:9100" ||
		p.PID != 4100 || time.Since(p.StartedAt) < 7*time.Minute || p.Labels["version"] != "1.4.2" || len(p.Labels) != 1 {
		t.Errorf("first registration %+v", p)
	}
	for _, reg := range d.Page {
		if reg.Shown != (reg.Key != prefix+"api/web-2/0") {
			t.Errorf("%s shown = %v", reg.Key, reg.Shown)
		}
	}
	if len(r.Output.Files) != 1 || r.Output.LastError != "" || r.Output.Bytes == 0 {
		t.Errorf("output %+v", r.Output)
	}

	// Filtered and paged.
	_, r = getStatus(t, in, "?job=api&host=web-1&offset=1&limit=1")
	if r.Discovery.Matching != 2 || len(r.Discovery.Page) != 1 || r.Discovery.Page[0].Key != prefix+"api/web-1/1" {
		t.Errorf("api on web-1, second: %d matching, page %+v", r.Discovery.Matching, r.Discovery.Page)
	}
	for _, q := range []string{"?limit=0", "?limit=100000", "?offset=-1", "?offset=x"} {
		code, _, body := httpGet("http://" + in.web + "/api/v1/status" + q)
		name := strings.SplitN(q[1:], "=", 2)[0]
		if code != http.StatusBadRequest || !strings.Contains(string(body), name) {
			t.Errorf("%s: %d %s, want 400 naming %s", q, code, body, name)
		}
	}
	if code, _, _ := httpGet("http://" + in.web + "/no-such-page"); code != http.StatusNotFound {
		t.Errorf("/no-such-page: %d, want 404", code)
	}
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// Issue 15, acceptance 1: the status page in a real browser (Debian's
// Chromium, headless): each registration, each rejected key with its
// reason and each dropped duplicate with its winner is on the page as the
// browser renders it, and a screenshot is taken (WORKERSD_STATUS_SCREENSHOT
// names where; docs/STATUS.md shows one).
func TestStatusPageInBrowser(t *testing.T) {
	chromium := buildtest.RequireTool(t, "chromium", "apt-get install chromium")
	in, _ := statusFixture(t)
	poll.Until(t, 10*time.Second, func() bool {
		_, r := getStatus(t, in, "")
		return r.Discovery.RejectedTotal == 2 && r.Discovery.DuplicatesTotal == 1 && !r.Etcd.Health.CheckedAt.IsZero()
	}, "status with 2 rejected keys, 1 duplicate and etcd's health checked")

	browser := func(args ...string) []byte {
		t.Helper()
		return runChromium(t, chromium, args...)
	}
	dom := string(browser("--dump-dom", "http://"+in.web+"/"))
	row := func(class string, cells ...string) {
		t.Helper()
		if !hasRow(dom, class, cells...) {
			t.Errorf("no %s row with %q on the page as Chromium renders it", class, cells)
		}
	}
	row("registration", "api", "web-1", "10.0.0.1:9100", prefix+"api/web-1/0", "yes")
	row("registration", "batch", "web-2", "10.0.0.2:9100", prefix+"batch/web-2/1", "yes")
	row("registration dup", "api", "web-2", "10.0.0.2:9100", "no: duplicate")
	row("rejected", prefix+"api/web-3/0", "value", "invalid JSON")
	row("rejected", prefix+"api/web-3/1", "labels", "bad-name")
	row("duplicate", "10.0.0.2:9100", prefix+"api/web-2/0", prefix+"batch/web-2/1")
	for _, want := range []string{`id="etcd-reachable"><span class="good">yes</span>`, `id="etcd-alarms"><span class="good">none</span>`, "% of the quota</td>", `href="/metrics"`, `href="/sd"`, `href="/api/v1/status"`} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %s", want)
		}
	}

	shot := os.Getenv("WORKERSD_STATUS_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "status.png")
	} else if shot, _ = filepath.Abs(shot); shot == "" {
		t.Fatal("WORKERSD_STATUS_SCREENSHOT")
	}
	browser("--screenshot="+shot, "--window-size=1280,1400", "--hide-scrollbars", "http://"+in.web+"/")
	png, err := os.ReadFile(shot)
	if err != nil || len(png) < 1000 || string(png[1:4]) != "PNG" {
		t.Fatalf("screenshot %s: %d bytes, %v", shot, len(png), err)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
}

// runChromium runs Debian's Chromium, headless, with args, and returns
// what it printed.
func runChromium(t *testing.T, chromium string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, append([]string{"--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-dev-shm-usage", "--user-data-dir=" + t.TempDir()}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

// hasRow says whether dom, a page as Chromium renders it, has a table row
// of class with every one of cells.
func hasRow(dom, class string, cells ...string) bool {
	for line := range strings.SplitSeq(dom, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), `<tr class="`+class+`"`) {
			continue
		}
		ok := true
		for _, c := range cells {
			ok = ok && strings.Contains(line, html.EscapeString(c))
		}
		if ok {
			return true
		}
	}
	return false
}

// Issue 21, smaller findings: the status page's "next" link at a huge
// offset pointed at a negative one (offset + limit wrapped around).
func TestStatusPageAtAHugeOffset(t *testing.T) {
	in, _ := statusFixture(t)
	poll.Until(t, 10*time.Second, func() bool {
		_, r := getStatus(t, in, "")
		return r.Discovery.Registrations == 5
	}, "5 registrations")
	huge := strconv.Itoa(int(^uint(0) >> 1))
	for _, q := range []string{"?offset=" + huge, "?offset=" + huge + "&limit=1000", "?offset=" + strconv.Itoa(int(^uint(0)>>1)-50) + "&limit=100"} {
		code, _, body := httpGet("http://" + in.web + "/" + q)
		if code != http.StatusOK {
			t.Errorf("%s: %d %s", q, code, body)
			continue
		}
		if bytes.Contains(body, []byte(">next<")) || bytes.Contains(body, []byte("offset=-")) || !bytes.Contains(body, []byte("none of 5")) {
			t.Errorf("%s: a next link or a negative offset on the page:\n%s", q, body)
		}
		if !bytes.Contains(body, []byte(">previous<")) {
			t.Errorf("%s: no previous link", q)
		}
		if code, r := getStatus(t, in, q); code != http.StatusOK || len(r.Discovery.Page) != 0 || r.Discovery.Matching != 5 {
			t.Errorf("%s as JSON: %d, %+v", q, code, r.Discovery)
		}
	}
	// Paging near the end still works.
	_, _, body := httpGet("http://" + in.web + "/?offset=2&limit=2")
	if !bytes.Contains(body, []byte("3 to 4 of 5")) || !bytes.Contains(body, []byte("offset=4")) {
		t.Errorf("offset 2, limit 2: no next link to offset 4:\n%s", body)
	}
	_, _, body = httpGet("http://" + in.web + "/?offset=3&limit=2")
	if !bytes.Contains(body, []byte("4 to 5 of 5")) || bytes.Contains(body, []byte(">next<")) {
		t.Errorf("offset 3, limit 2: a next link past the end:\n%s", body)
	}
}
