package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/discovery/targetgroup"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/sdfile"
)

// Acceptance 1: registrations appear in the file and at /sd with exactly the
// labels of DESIGN.md, and removals disappear; Prometheus' own readers and
// promtool accept the output.
func TestRegistrationsAppearAndDisappear(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	file := filepath.Join(t.TempDir(), "sd", "workersd.json")
	in := startSdwriter(t, file, "--etcd.endpoints="+etcd.Endpoint())
	waitFile(t, file)
	if got := in.sd(t); string(got) != "[]\n" {
		t.Fatalf("/sd with no registrations: %q", got)
	}

	put(t, cli, prefix+"api/web-1/0", `{"address":"10.0.0.5:40211","pid":4242,"started_at":"2026-11-21T10:00:00Z","labels":{"version":"1.4.2"}}`)
	put(t, cli, prefix+"api/web-2/1", `{"address":"10.0.0.6:40300","scheme":"https","metrics_path":"/internal/metrics","pid":7,"started_at":"2026-11-21T12:00:00+01:00"}`)
	want := `[
  {"targets":["10.0.0.5:40211"],"labels":{"host":"web-1","instance":"web-1/0","job":"api","version":"1.4.2","worker":"0"}},
  {"targets":["10.0.0.6:40300"],"labels":{"__metrics_path__":"/internal/metrics","__scheme__":"https","host":"web-2","instance":"web-2/1","job":"api","worker":"1"}}
]
`
	got := waitFile(t, file, "10.0.0.5:40211", "10.0.0.6:40300")
	if string(got) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", got, want)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o644 {
		t.Errorf("file mode %v, want 0644", fi.Mode().Perm())
	}
	if sd := in.sd(t); !bytes.Equal(sd, got) {
		t.Errorf("/sd serves other bytes than the file:\n%s", sd)
	}

	// Prometheus' http_sd reader on /sd.
	groups := httpSDRefresh(t, "http://"+in.web+"/sd")
	if len(groups) != 2 || groups[1].Labels["__scheme__"] != "https" || groups[0].Labels["instance"] != "web-1/0" {
		t.Errorf("http_sd read %v", groups)
	}

	// promtool on a file_sd job reading the file; and, so that a pass means
	// something, on a broken file.
	if ok, out := promtoolCheck(t, file); !ok || !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool check config failed:\n%s", out)
	}
	broken := filepath.Join(t.TempDir(), "broken.json")
	os.WriteFile(broken, []byte(`[{"targets":["a:1"],"labels":{"bad-name":"x"}}]`), 0o644)
	if ok, out := promtoolCheck(t, broken); ok {
		t.Errorf("promtool accepted a broken file_sd file, so it checks nothing:\n%s", out)
	}

	del(t, cli, "api/web-1/0")
	waitFile(t, file, "10.0.0.6:40300")
	del(t, cli, "api/web-2/1")
	if got := waitFile(t, file); string(got) != "[]\n" {
		t.Errorf("empty file: %q", got)
	}
	if n := in.metric(t, "workersd_sdwriter_output_writes_total"); n < 4 {
		t.Errorf("writes_total = %v", n)
	}
	if n := in.metric(t, "workersd_sdwriter_event_to_output_seconds"); n < 4 {
		t.Errorf("latency histogram has %v samples", n)
	}
}

// httpSDRefresh reads url as Prometheus' http_sd does (discovery/http,
// whose package needs modules this one does not): 200, a JSON content
// type, target groups that unmarshal and are not null.
func httpSDRefresh(t *testing.T, url string) []*targetgroup.Group {
	t.Helper()
	code, ct, body := httpGet(url)
	if code != 200 {
		t.Fatalf("http_sd: status %d", code)
	}
	if !regexp.MustCompile(`^(?i:application\/json(;\s*charset=("utf-8"|utf-8))?)$`).MatchString(ct) {
		t.Fatalf("http_sd: unsupported content type %q", ct)
	}
	groups, err := parseTargets(body)
	if err != nil {
		t.Fatalf("http_sd: %v", err)
	}
	return groups
}

// Acceptance 2: compaction while sdwriter is cut off from etcd. The file is
// never emptied and converges once the watch notices.
func TestCompactionWhileDisconnected(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	px := startProxy(t, etcd.Endpoint())
	file := filepath.Join(t.TempDir(), "workersd.json")
	in := startSdwriter(t, file, "--etcd.endpoints="+px.addr())
	putReg(t, cli, "api/a/0", "h:1")
	putReg(t, cli, "api/b/0", "h:2") // stays registered throughout
	waitFile(t, file, "h:1", "h:2")
	watch := watchFile(file, "h:2")

	px.pause()
	del(t, cli, "api/a/0")
	putReg(t, cli, "api/c/0", "h:3")
	for i := range 20 {
		putReg(t, cli, "api/c/0", fmt.Sprintf("h:%d", 3+i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // cut off for a while; the file must stay
	waitFile(t, file, "h:1", "h:2")

	px.resume()
	waitFile(t, file, "h:2", "h:22")
	watch.check(t)
	if n := in.metric(t, "workersd_sdwriter_etcd_relists_total"); n < 1 {
		t.Errorf("relists_total = %v after compaction", n)
	}
}

// Acceptance 2: etcd restarted, and etcd stopped for a while. The file is
// never emptied, /sd keeps serving, and changes made afterwards arrive.
func TestEtcdRestartedAndStopped(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	file := filepath.Join(t.TempDir(), "workersd.json")
	in := startSdwriter(t, file, "--etcd.endpoints="+etcd.Endpoint())
	putReg(t, cli, "api/b/0", "h:2")
	waitFile(t, file, "h:2")
	watch := watchFile(file, "h:2")

	etcd.Restart()
	putReg(t, cli, "api/c/0", "h:3")
	waitFile(t, file, "h:2", "h:3")

	etcd.Stop()
	poll.Until(t, 30*time.Second, func() bool { return in.metric(t, "workersd_sdwriter_etcd_reachable") == 0 }, "etcd_reachable 0")
	before, _ := os.ReadFile(file)
	time.Sleep(5 * time.Second) // stopped "for a minute", shortened
	if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
		t.Errorf("the file changed while etcd was stopped:\n%s\n->\n%s", before, after)
	}
	if sd := in.sd(t); !bytes.Equal(sd, before) {
		t.Errorf("/sd changed while etcd was stopped: %s", sd)
	}
	if code, _, _ := httpGet("http://" + in.web + "/-/ready"); code != 200 {
		t.Errorf("/-/ready = %d while etcd is stopped; the last good targets are still served", code)
	}

	etcd.Restart()
	del(t, cli, "api/c/0")
	putReg(t, cli, "api/d/0", "h:4")
	waitFile(t, file, "h:2", "h:4")
	watch.check(t)
	poll.Until(t, 30*time.Second, func() bool { return in.metric(t, "workersd_sdwriter_etcd_reachable") == 1 }, "etcd_reachable 1")
}

// Acceptance 3: sdwriters on the same etcd write identical bytes, whether
// they saw the changes through the watch or in their first listing.
func TestTwoSdwritersWriteIdenticalFiles(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	dir := t.TempDir()
	fileA, fileB, fileC := filepath.Join(dir, "a.json"), filepath.Join(dir, "b.json"), filepath.Join(dir, "c.json")
	startSdwriter(t, fileA, "--etcd.endpoints="+etcd.Endpoint())
	startSdwriter(t, fileB, "--etcd.endpoints="+etcd.Endpoint())

	for i := range 30 {
		put(t, cli, fmt.Sprintf("%sjob%d/host-%d/%d", prefix, i%3, i%5, i),
			fmt.Sprintf(`{"address":"10.0.%d.%d:%d","pid":%d,"labels":{"zone":"z%d","v":"é\u2028<&>"}}`, i%4, i, 1000+i, i+1, i%2))
	}
	// Duplicates (newest wins), garbage, a deletion, and a transaction.
	put(t, cli, prefix+"job0/host-9/0", `{"address":"10.0.0.0:1000"}`)
	put(t, cli, prefix+"job0/host-9/1", `{"address":"10.0.0.0:1000"}`)
	put(t, cli, prefix+"job0/host-9/x", `{"address":"10.0.0.0:1000"}`)
	put(t, cli, prefix+"job1/host-9/2", `{`)
	del(t, cli, "job1/host-1/1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Txn(ctx).Then(
		clientv3.OpPut(prefix+"job2/host-8/0", `{"address":"h:1"}`),
		clientv3.OpPut(prefix+"job2/host-8/1", `{"address":"h:1"}`),
		clientv3.OpDelete(prefix+"job2/host-2/2"),
	).Commit(); err != nil {
		t.Fatal(err)
	}
	put(t, cli, prefix+"zz/last/0", `{"address":"last:1"}`)

	isLast := func(path string) func() bool {
		return func() bool {
			b, _ := os.ReadFile(path)
			return bytes.Contains(b, []byte(`"last:1"`))
		}
	}
	poll.Until(t, 30*time.Second, isLast(fileA), "a up to date")
	poll.Until(t, 30*time.Second, isLast(fileB), "b up to date")
	startSdwriter(t, fileC, "--etcd.endpoints="+etcd.Endpoint()) // sees it all in one listing
	poll.Until(t, 30*time.Second, isLast(fileC), "c up to date")

	a, _ := os.ReadFile(fileA)
	b, _ := os.ReadFile(fileB)
	c, _ := os.ReadFile(fileC)
	if !bytes.Equal(a, b) || !bytes.Equal(a, c) {
		t.Fatalf("files differ:\n%s\n---\n%s\n---\n%s", a, b, c)
	}
	// 30 registrations; job0/host-0/0 hidden by host-9/1 (same address,
	// newer), two deleted, one of the transaction's pair, and last.
	if n := len(addresses(t, a)); n != 30-1+1-2+1+1 {
		t.Errorf("%d targets:\n%s", n, a)
	}
	regs := registrations(t, a)
	for _, key := range []string{"job0/host-0/0", "job0/host-9/0", "job2/host-8/0"} {
		if regs[key] {
			t.Errorf("%s has a newer registration with its address, yet it is in the file", key)
		}
	}
	if !regs["job0/host-9/1"] || !regs["job2/host-8/1"] {
		t.Errorf("the newest registration of a duplicated address must win:\n%s", a)
	}
}

// Acceptance 4: garbage under the prefix is skipped and counted; the file
// stays valid with the other targets; the daemon stays up.
func TestGarbageIsSkipped(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	file := filepath.Join(t.TempDir(), "workersd.json")
	in := startSdwriter(t, file, "--etcd.endpoints="+etcd.Endpoint())
	putReg(t, cli, "api/good/0", "h:1")
	garbage := map[string]string{
		"api/bad/1":   "{not json",
		"api/bad/2":   `{"address":"h:2","schema":"v2"}`,
		"api/bad/3":   `{"address":"h:3","labels":{"bad-name":"x"}}`,
		"api/bad/4":   `{"address":"h:4","labels":{"__address__":"evil:1"}}`,
		"api/bad/5":   `{"address":"h:5","labels":{"v":"` + strings.Repeat("x", 1<<20) + `"}}`,
		"api/bad/6":   "{\"address\":\"h:6\",\"labels\":{\"v\":\"\xff\xfe\"}}",
		"api/bad":     `{"address":"h:7"}`,
		"api/bad/8/9": `{"address":"h:8"}`,
		"api\xff/x/0": `{"address":"h:9"}`,
	}
	for k, v := range garbage {
		put(t, cli, prefix+k, v)
	}
	putReg(t, cli, "api/good/1", "h:10")
	waitFile(t, file, "h:1", "h:10")
	poll.Until(t, 10*time.Second, func() bool {
		return in.metric(t, "workersd_sdwriter_invalid_registrations_skipped_total") == float64(len(garbage))
	}, "every garbage entry counted")
	if n := in.metric(t, "workersd_sdwriter_invalid_registrations"); n != float64(len(garbage)) {
		t.Errorf("invalid_registrations = %v, want %d", n, len(garbage))
	}
	for _, reason := range []string{"value", "labels", "key"} {
		if in.metric(t, "workersd_sdwriter_invalid_registrations", "reason", reason) == 0 {
			t.Errorf("nothing counted with reason %q", reason)
		}
	}
	if code, _, _ := httpGet("http://" + in.web + "/-/healthy"); code != 200 {
		t.Errorf("/-/healthy = %d", code)
	}
	if ok, out := promtoolCheck(t, file); !ok {
		t.Errorf("promtool check config:\n%s", out)
	}
	if n := in.metric(t, "workersd_sdwriter_targets"); n != 2 {
		t.Errorf("targets = %v", n)
	}
}

// Issue 12, acceptance 4: sdwriter's own series do not grow with what
// clients write: 300 jobs and 300 malformed keys of every kind leave the
// workersd_* series below 100, as many as with one job.
func TestSeriesDoNotGrowWithInput(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	file := filepath.Join(t.TempDir(), "workersd.json")
	in := startSdwriter(t, file, "--etcd.endpoints="+etcd.Endpoint())
	putReg(t, cli, "api/h/0", "h:1")
	waitFile(t, file, "h:1")
	before := in.ownSeries(t)
	for i := range 300 {
		putReg(t, cli, fmt.Sprintf("job-%d/h/0", i), fmt.Sprintf("h:%d", 1000+i))
		put(t, cli, prefix+fmt.Sprintf("job-%d/bad/%d", i, i), fmt.Sprintf(`{"address":"h:%d","labels":{"x%d-y":"1"}}`, i, i))
	}
	poll.Until(t, 20*time.Second, func() bool { return in.metric(t, "workersd_sdwriter_targets") == 301 }, "301 targets")
	after := in.ownSeries(t)
	t.Logf("workersd_* series: %d with one job, %d with 301 jobs and 300 malformed keys", before, after)
	if after >= 100 || after != before {
		t.Errorf("workersd_* series: %d before, %d after, want the same and below 100", before, after)
	}
}

// Without --output.file only /sd serves the targets.
func TestNoOutputFile(t *testing.T) {
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	t.Chdir(dir)
	in := startSdwriter(t, "", "--etcd.endpoints="+etcd.Endpoint())
	putReg(t, etcd.Client(t), "api/a/0", "h:1")
	poll.Until(t, 10*time.Second, func() bool {
		return fmt.Sprint(addresses(t, in.sd(t))) == "[h:1]"
	}, "/sd holding the target")
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("files written without --output.file: %v", ents)
	}
}

// Issue 12, finding 8: a second sdwriter on a data dir in use hung for
// ever, silent and deaf to SIGTERM. It now exits at once, naming the
// directory.
func TestEmbeddedDataDirInUse(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "etcd")
	startSdwriter(t, "", "--etcd.embed.data-dir="+dataDir,
		"--etcd.embed.listen-address="+etcdtest.FreeAddr(t), "--etcd.embed.peer-address="+etcdtest.FreeAddr(t))
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	code := run(ctx, []string{"--etcd.embed.data-dir=" + dataDir, "--output.file=",
		"--etcd.embed.listen-address=" + etcdtest.FreeAddr(t), "--etcd.embed.peer-address=" + etcdtest.FreeAddr(t),
		"--web.listen-address=" + etcdtest.FreeAddr(t)}, &stderr)
	if ctx.Err() != nil {
		t.Fatal("the second sdwriter did not exit within 30s")
	}
	t.Logf("second sdwriter exited %d after %s", code, time.Since(start).Round(time.Millisecond))
	if code != 1 || !strings.Contains(stderr.String(), "in use") || !strings.Contains(stderr.String(), dataDir) {
		t.Fatalf("exit %d, want 1 with the data dir named; stderr: %s", code, stderr.String())
	}
}

func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"--etcd.prefix=workersd"},
		{"--etcd.endpoints=a:1", "--etcd.username=u", "--etcd.password-file=f", "--etcd.prefix=/x"},
		{"--etcd.cacert=ca.pem"},
		{"--log.level=loud"},
		{"--log.format=xml"},
		// Issue 12, finding 6: an embedded etcd without authentication on
		// every interface was accepted without a word.
		{"--etcd.embed.listen-address=0.0.0.0:2379"},
		{"--etcd.embed.peer-address=192.0.2.1:2380"},
		{"--output.shards=0"},
		{"--output.shards=100000"},
		{"--output.write-rate=fast"},
		// Issue 24: the checks of the Prometheus servers.
		{"--prometheus.url=localhost:9090"},
		{"--prometheus.url=http://localhost:9090/?x=1"},
		{"--prometheus.url=http://a:9090", "--prometheus.url=http://a:9090"},
		{"--prometheus.url=http://a:9090", "--prometheus.http-config-file=no-such-file.yml"},
		{"--prometheus.http-config-file=http.yml"},
		{"--prometheus.check-interval=100ms"},
		{"--check.slot-hold=-1s"},
		{"--check.final-scrape-timeout=never"},
	} {
		var stderr bytes.Buffer
		if code := run(context.Background(), args, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if !strings.Contains(stderr.String(), "error:") {
			t.Errorf("%v: no clear error: %q", args, stderr.String())
		}
		if flag, _, _ := strings.Cut(args[len(args)-1], "="); strings.HasPrefix(flag, "--prometheus.") || strings.HasPrefix(flag, "--check.") {
			if !strings.Contains(stderr.String(), flag) {
				t.Errorf("%v: the error does not name %s: %q", args, flag, stderr.String())
			}
		}
	}
}

// --etcd.username and --etcd.password-file against an etcd with
// authentication enabled.
func TestEtcdAuth(t *testing.T) {
	etcd := etcdtest.Start(t)
	admin := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "s3cret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	cli, err := etcdclient.New([]string{etcd.Endpoint()}, clientv3.Config{Username: "root", Password: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	pw := filepath.Join(t.TempDir(), "password")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	file := filepath.Join(t.TempDir(), "workersd.json")
	startSdwriter(t, file, "--etcd.endpoints="+etcd.Endpoint(), "--etcd.username=root", "--etcd.password-file="+pw)
	putReg(t, cli, "api/a/0", "h:1")
	waitFile(t, file, "h:1")
}

// Issue 13: --output.shards=3 writes one file per shard, each holding the
// targets whose instance (host/slot) hashes to it, served as /sd?shard=k
// too; the three together hold every registration once.
func TestShardedOutput(t *testing.T) {
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "workersd.json")
	in := startSdwriter(t, file, "--etcd.endpoints="+etcd.Endpoint(), "--output.shards=3")
	cli := etcd.Client(t)
	want := make([][]string, 3)
	for i := range 30 {
		host, slot := fmt.Sprintf("h%d", i/5), i%5
		addr := fmt.Sprintf("10.0.0.%d:9100", i+1)
		putReg(t, cli, fmt.Sprintf("api/%s/%d", host, slot), addr)
		k := sdfile.Shard(fmt.Sprintf("%s/%d", host, slot), 3)
		want[k] = append(want[k], addr)
	}
	for k := range 3 {
		slices.Sort(want[k])
		shardFile := filepath.Join(dir, fmt.Sprintf("shard-%d-of-3", k), "workersd.json")
		poll.Until(t, 10*time.Second, func() bool {
			b, err := os.ReadFile(shardFile)
			return err == nil && slices.Equal(slices.Sorted(slices.Values(addresses(t, b))), want[k])
		}, "%s holding %v", shardFile, want[k])
		code, _, body := httpGet(fmt.Sprintf("http://%s/sd?shard=%d", in.web, k))
		if b, _ := os.ReadFile(shardFile); code != http.StatusOK || !bytes.Equal(body, b) {
			t.Errorf("/sd?shard=%d: %d, not the file: %q", k, code, body)
		}
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s written with --output.shards: %v", file, err)
	}
	if code, _, body := httpGet("http://" + in.web + "/sd"); code != http.StatusBadRequest {
		t.Errorf("/sd without a shard: %d %q, want 400", code, body)
	}
}

// main runs sdwriter on one processor only when it reads an etcd of its
// own (--etcd.endpoints not empty, the last one counting as in kingpin).
func TestExternalEtcdArgs(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--etcd.endpoints=http://e:2379"}, true},
		{[]string{"--etcd.endpoints", "http://e:2379", "--output.file=x"}, true},
		{[]string{"--etcd.endpoints="}, false},
		{[]string{"--etcd.endpoints=http://e:2379", "--etcd.endpoints="}, false},
		{[]string{"--etcd.embed.data-dir=d"}, false},
		{[]string{"--", "--etcd.endpoints=http://e:2379"}, false},
	} {
		if got := externalEtcd(c.args); got != c.want {
			t.Errorf("externalEtcd(%q) = %v, want %v", c.args, got, c.want)
		}
	}
}
