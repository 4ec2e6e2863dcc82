package main

import (
	"bytes"
	"context"
	"path/filepath"

	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/nospacetest"
	"github.com/workersd/workersd/internal/testing/poll"
)

// Issue 23, acceptance 1, and issue 21, acceptance 2 (sdwriter's part):
// the embedded etcd at a small quota raises NOSPACE; the alarm is on the
// status page (JSON and HTML), in the metrics and in the log, with the
// database's size and quota; after compaction, defragmentation and the
// alarm's disarm, registrations work again and reach the targets.
func TestEmbeddedEtcdAtItsQuota(t *testing.T) {
	etcdAddr := etcdtest.FreeAddr(t)
	in := startSdwriter(t, "", "--etcd.embed.data-dir="+filepath.Join(t.TempDir(), "etcd"),
		"--etcd.embed.listen-address="+etcdAddr, "--etcd.embed.peer-address="+etcdtest.FreeAddr(t),
		"--etcd.embed.quota-backend-bytes=4MiB", "--etcd.status-interval=100ms")
	cli, err := etcdclient.New([]string{etcdAddr}, clientv3.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	var r report
	poll.Until(t, 10*time.Second, func() bool {
		_, r = getStatus(t, in, "")
		return !r.Etcd.Health.CheckedAt.IsZero()
	}, "etcd's health checked")
	h := r.Etcd.Health
	if len(h.Endpoints) != 1 || h.Endpoints[0].Endpoint != etcdAddr || h.Endpoints[0].QuotaBytes != 4<<20 ||
		h.Endpoints[0].DBSizeBytes <= 0 || h.Endpoints[0].DBSizeInUseBytes <= 0 || len(h.Alarms) != 0 {
		t.Fatalf("health %+v", h)
	}
	if got := in.metric(t, "workersd_sdwriter_etcd_db_quota_bytes", "endpoint", etcdAddr); got != 4<<20 {
		t.Errorf("workersd_sdwriter_etcd_db_quota_bytes = %v", got)
	}
	if got := in.metric(t, "workersd_sdwriter_etcd_alarm_active", "alarm", "NOSPACE"); got != 0 {
		t.Errorf("NOSPACE active before the fill: %v", got)
	}
	in.metric(t, "workersd_sdwriter_embedded_etcd_defrags_total") // registered

	n := nospacetest.Fill(t, cli, "/fill/", 1000)
	poll.Until(t, 10*time.Second, func() bool {
		_, r = getStatus(t, in, "")
		return len(r.Etcd.Health.Alarms) == 1
	}, "the alarm on the status page")
	a := r.Etcd.Health.Alarms[0]
	if a.Alarm != "NOSPACE" || a.MemberID == "" || !strings.Contains(a.Action, "etcdctl alarm disarm") {
		t.Errorf("after %d puts to NOSPACE: alarm %+v", n, a)
	}
	// etcd refuses a write that would take the file past the quota: the
	// file is within one write of it.
	if e := r.Etcd.Health.Endpoints[0]; e.DBSizeBytes+2*nospacetest.ValueSize < 4<<20 || !strings.Contains(strings.Join(e.Errors, " "), "NOSPACE") {
		t.Errorf("status at NOSPACE: %+v", e)
	}
	poll.Until(t, 10*time.Second, func() bool {
		return in.metric(t, "workersd_sdwriter_etcd_alarm_active", "alarm", "NOSPACE") == 1
	}, "etcd_alarm_active{alarm=NOSPACE} 1")
	if size := in.metric(t, "workersd_sdwriter_etcd_db_size_bytes", "endpoint", etcdAddr); size+2*nospacetest.ValueSize < 4<<20 {
		t.Errorf("workersd_sdwriter_etcd_db_size_bytes = %v at NOSPACE", size)
	}
	if log := in.log.String(); !strings.Contains(log, "[ERROR] sdwriter.etcdhealth: etcd alarm active: alarm=NOSPACE") ||
		!strings.Contains(log, "etcdctl defrag") {
		t.Errorf("no log line of the alarm with what to do:\n%s", log)
	}
	_, _, page := httpGet("http://" + in.web + "/")
	if !bytes.Contains(page, []byte(`id="etcd-alarms"><p class="alarm"><span class="bad">NOSPACE</span>`)) ||
		!bytes.Contains(page, []byte("of the quota")) {
		t.Errorf("the page does not show the alarm and the quota:\n%s", page)
	}

	nospacetest.Free(t, cli, "/fill/")
	putReg(t, cli, "api/web-1/0", "10.0.0.1:9100")
	poll.Until(t, 10*time.Second, func() bool {
		return bytes.Contains(in.sd(t), []byte("10.0.0.1:9100"))
	}, "a registration after the runbook reaching the targets")
	poll.Until(t, 10*time.Second, func() bool {
		_, r = getStatus(t, in, "")
		return len(r.Etcd.Health.Alarms) == 0 && in.metric(t, "workersd_sdwriter_etcd_alarm_active", "alarm", "NOSPACE") == 0
	}, "the alarm cleared on the page and in the metrics")
	if e := r.Etcd.Health.Endpoints[0]; e.DBSizeBytes > 1<<20 {
		t.Errorf("%d bytes after the runbook", e.DBSizeBytes)
	}
	poll.Until(t, 10*time.Second, func() bool { return strings.Contains(in.log.String(), "etcd alarm cleared: alarm=NOSPACE") },
		"the clearing logged")
	if n := strings.Count(in.log.String(), "etcd alarm active"); n != 1 {
		t.Errorf("the alarm logged %d times, want once", n)
	}
}

// Bad values of the embedded etcd's and the health check's flags are
// refused at start, naming the flag.
func TestEtcdFlagErrors(t *testing.T) {
	for _, c := range []struct{ arg, want string }{
		{"--etcd.embed.quota-backend-bytes=0", "want at least 1MiB"},
		{"--etcd.embed.quota-backend-bytes=512KiB", "want at least 1MiB"},
		{"--etcd.embed.quota-backend-bytes=lots", "quota-backend-bytes"},
		{"--etcd.embed.compaction-retention=0s", "must compact"},
		{"--etcd.embed.compaction-retention=500ms", "want at least 1s"},
		{"--etcd.embed.compaction-retention=often", "compaction-retention"},
		{"--etcd.status-interval=0s", "want at least 100ms"},
	} {
		var stderr bytes.Buffer
		if code := run(context.Background(), []string{c.arg}, &stderr); code != 2 {
			t.Errorf("%s: exit %d, want 2", c.arg, code)
		}
		if !strings.Contains(stderr.String(), "error:") || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%s: %q, want an error saying %q", c.arg, stderr.String(), c.want)
		}
	}
}
