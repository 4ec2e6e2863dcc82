package main

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/embedetcd"
	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/nospacetest"
	"github.com/workersd/workersd/internal/testing/poll"
)

// Issue 21, acceptance 2 (the agent's part): with etcd at NOSPACE the
// alarm is in the agent's metrics and log, where a host's operator looks.
func TestNoSpaceAlarmInTheAgentsMetricsAndLog(t *testing.T) {
	srv, err := embedetcd.Start(embedetcd.Config{
		Dir: filepath.Join(t.TempDir(), "etcd"), ClientAddr: etcdtest.FreeAddr(t), PeerAddr: etcdtest.FreeAddr(t),
		QuotaBackendBytes: 8 << 20, CompactionRetention: -1, UnsafeNoFsync: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli, err := etcdclient.New([]string{srv.Endpoint()}, clientv3.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	nospacetest.Fill(t, cli, "/fill/", 1000)

	dir := t.TempDir()
	web := etcdtest.FreeAddr(t)
	_, logs := start(t, "--etcd.endpoints="+srv.Endpoint(), "--host=h", "--listen.socket="+filepath.Join(dir, "a.sock"),
		"--state.file="+filepath.Join(dir, "agent.json"), "--web.listen-address="+web)
	want := `workersd_agent_etcd_alarm_active{alarm="NOSPACE"} 1`
	var body string
	poll.Until(t, 15*time.Second, func() bool {
		resp, err := http.Get("http://" + web + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return strings.Contains(body, want)
	}, "no %s in the agent's metrics", want)
	poll.Until(t, 5*time.Second, func() bool { return strings.Contains(logs.String(), "NOSPACE") }, "no NOSPACE line in the agent's log")
}
