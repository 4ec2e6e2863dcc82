// Command etcdmember runs one member of an etcd cluster as its own process,
// so that the integration suite can SIGKILL a member (the leader, or all of
// them) the way a crash would, without needing an etcd installation: it is
// the same embedded etcd (internal/embedetcd) that sdwriter serves.
//
// It prints "ready" on standard output once the member serves clients, and
// stops cleanly on SIGTERM or SIGINT. Started again with the same data
// directory, it rejoins its cluster with its data.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"go.uber.org/zap"

	"github.com/workersd/workersd/internal/embedetcd"
)

func main() {
	app := kingpin.New("etcdmember", "One member of an etcd cluster (embedded etcd), for the integration suite.")
	var (
		name        = app.Flag("name", "Member name.").Required().String()
		dir         = app.Flag("data-dir", "Data directory.").Required().String()
		clientAddr  = app.Flag("client-address", "host:port for clients.").Required().String()
		peerAddr    = app.Flag("peer-address", "host:port for peers.").Required().String()
		cluster     = app.Flag("initial-cluster", "name=http://host:port,... of every member.").Required().String()
		token       = app.Flag("cluster-token", "Initial cluster token.").Default("workersd-integration").String()
		noFsync     = app.Flag("unsafe-no-fsync", "Do not fsync (a process kill loses nothing; a machine crash would).").Bool()
		startupWait = app.Flag("start-timeout", "How long to wait for the member to serve.").Default("60s").Duration()
		verbose     = app.Flag("verbose", "Write etcd's own logs to standard error.").Bool()
	)
	kingpin.MustParse(app.Parse(os.Args[1:]))

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	lg := zap.NewNop()
	if *verbose {
		var err error
		if lg, err = zap.NewDevelopment(); err != nil {
			fmt.Fprintln(os.Stderr, "etcdmember: logger:", err)
			os.Exit(1)
		}
	}
	start := time.Now()
	srv, err := embedetcd.Start(embedetcd.Config{
		Name:           *name,
		Dir:            *dir,
		ClientAddr:     *clientAddr,
		PeerAddr:       *peerAddr,
		InitialCluster: *cluster,
		ClusterToken:   *token,
		Logger:         lg,
		StartTimeout:   *startupWait,
		UnsafeNoFsync:  *noFsync,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdmember:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	fmt.Fprintf(os.Stderr, "etcdmember %s: serving clients on %s after %s\n", *name, *clientAddr, time.Since(start).Round(time.Millisecond))

	select {
	case sig := <-signals:
		fmt.Fprintf(os.Stderr, "etcdmember %s: %s, stopping\n", *name, sig)
		srv.Close()
	case err := <-srv.Err():
		fmt.Fprintf(os.Stderr, "etcdmember %s: %v\n", *name, err)
		srv.Close()
		os.Exit(1)
	}
}
