package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-kit/kit/sd/etcdv3"
	kitlog "github.com/go-kit/log"
	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/registrar"
)

// Recovery is the time from a loss to being registered again; Never when
// not within the limit.
type Recovery struct {
	Ms    float64 `json:"ms"`
	Never bool    `json:"never"`
}

type PeerResult struct {
	Name        string    `json:"name"`
	StartMs     []float64 `json:"start_ms"` // sorted
	AfterRevoke Recovery  `json:"after_revoke"`
	AfterWipe   Recovery  `json:"after_wipe"`
}

type GoKitResult struct {
	Peers   []PeerResult `json:"peers"`
	Limit   string       `json:"limit"`
	Samples int          `json:"samples"`
	TTL     string       `json:"ttl"`
}

// registration is one registered instance, of either library.
type registration interface {
	stop()
}

type peer struct {
	name   string
	prefix string
	// register creates a client and registers; it returns when the
	// library's call returns (the key may not be visible yet).
	register func(ctx context.Context, endpoint string, i int) (registration, error)
}

type wsdReg struct {
	cli *clientv3.Client
	r   *registrar.Registrar
}

func (w wsdReg) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w.r.Deregister(ctx)
	w.cli.Close()
}

type kitReg struct {
	r      *etcdv3.Registrar
	cancel context.CancelFunc
}

func (k kitReg) stop() { k.r.Deregister(); k.cancel() }

var peers = []peer{
	{
		name:   "workersd registrar",
		prefix: "/workersd/v1/",
		register: func(ctx context.Context, endpoint string, i int) (registration, error) {
			cli, err := etcdclient.New([]string{endpoint}, clientv3.Config{})
			if err != nil {
				return nil, err
			}
			r, err := registrar.New(registrar.Config{
				Client: cli, Job: "app", Host: "bench", TTL: 10 * time.Second,
				Value:  registrar.Value{Address: fmt.Sprintf("127.0.0.1:%d", 10000+i)},
				Logger: hclog.NewNullLogger(),
			})
			if err != nil {
				cli.Close()
				return nil, err
			}
			r.Register(ctx)
			return wsdReg{cli, r}, nil
		},
	},
	{
		name:   "go-kit sd/etcdv3",
		prefix: "/gokit/app/",
		register: func(ctx context.Context, endpoint string, i int) (registration, error) {
			kctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			cli, err := etcdv3.NewClient(kctx, []string{endpoint}, etcdv3.ClientOptions{
				DialTimeout: 3 * time.Second, DialKeepAlive: 3 * time.Second,
			})
			if err != nil {
				cancel()
				return nil, err
			}
			addr := fmt.Sprintf("127.0.0.1:%d", 10000+i)
			r := etcdv3.NewRegistrar(cli, etcdv3.Service{
				Key: "/gokit/app/" + addr, Value: addr,
				TTL: etcdv3.NewTTLOption(3*time.Second, 10*time.Second),
			}, kitlog.NewNopLogger())
			r.Register()
			return kitReg{r, cancel}, nil
		},
	},
}

// runGoKit measures comparison 3.
func runGoKit(ctx context.Context, tmp string, quick bool, log func(string, ...any)) (*GoKitResult, error) {
	res := &GoKitResult{Limit: "60s", Samples: 30, TTL: "10s"}
	limit := 60 * time.Second
	if quick {
		res.Samples, limit, res.Limit = 5, 15*time.Second, "15s"
	}
	etcd, err := startEtcd(tmp + "/gokit-start")
	if err != nil {
		return nil, err
	}
	defer etcd.Close()
	obs, err := etcd.Client()
	if err != nil {
		return nil, err
	}
	defer obs.Close()

	for i, p := range peers {
		pr := PeerResult{Name: p.name}
		for s := range res.Samples {
			wctx, wcancel := context.WithCancel(ctx)
			wch := obs.Watch(wctx, p.prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
			<-wch // the watch is in place before the clock starts
			t0 := time.Now()
			reg, err := p.register(ctx, etcd.Endpoint(), s)
			if err != nil {
				wcancel()
				return nil, fmt.Errorf("%s: %w", p.name, err)
			}
			if !waitEvent(wch, clientv3.EventTypePut, 10*time.Second) {
				wcancel()
				return nil, fmt.Errorf("%s: not registered within 10s", p.name)
			}
			pr.StartMs = append(pr.StartMs, ms(time.Since(t0)))
			reg.stop()
			ok := waitEvent(wch, clientv3.EventTypeDelete, 10*time.Second)
			wcancel()
			if !ok {
				return nil, fmt.Errorf("%s: still registered after stop", p.name)
			}
		}
		pr.StartMs = sortedCopy(pr.StartMs)
		res.Peers = append(res.Peers, pr)
		log("start to registered, %s: p50 %.2f ms", p.name, quantile(pr.StartMs, .5))
		_ = i
	}

	// Losses: every peer on its own member, all at once, so the 60 s waits
	// for peers that never come back overlap.
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(peers))
	for i, p := range peers {
		for _, loss := range []string{"revoke", "wipe"} {
			wg.Go(func() {
				rec, err := recovery(ctx, fmt.Sprintf("%s/gokit-%d-%s", tmp, i, loss), p, loss, limit)
				if err != nil {
					errs <- fmt.Errorf("%s after %s: %w", p.name, loss, err)
					return
				}
				if loss == "revoke" {
					res.Peers[i].AfterRevoke = rec
				} else {
					res.Peers[i].AfterWipe = rec
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return nil, err
	}
	for _, p := range res.Peers {
		log("%s: back %s after lease revoked, %s after etcd wiped", p.Name, p.AfterRevoke, p.AfterWipe)
	}
	return res, nil
}

func (r Recovery) String() string {
	if r.Never {
		return "never"
	}
	return fmt.Sprintf("%.0f ms", r.Ms)
}

// recovery registers with p on a member of its own, causes the loss, and
// times until p's key is back (from the moment the revoke returned, or the
// new cluster served).
func recovery(ctx context.Context, dir string, p peer, loss string, limit time.Duration) (Recovery, error) {
	etcd, err := startEtcd(dir)
	if err != nil {
		return Recovery{}, err
	}
	defer etcd.Close()
	obs, err := etcd.Client()
	if err != nil {
		return Recovery{}, err
	}
	defer obs.Close()
	reg, err := p.register(ctx, etcd.Endpoint(), 0)
	if err != nil {
		return Recovery{}, err
	}
	defer reg.stop()
	if !until(10*time.Second, time.Millisecond, func() bool { return present(ctx, obs, p.prefix) }) {
		return Recovery{}, fmt.Errorf("not registered")
	}
	// A few keep-alives first, as in a running service.
	time.Sleep(4 * time.Second)
	switch loss {
	case "revoke":
		resp, err := obs.Get(ctx, p.prefix, clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 1 {
			return Recovery{}, fmt.Errorf("get registration: %v (%d keys)", err, len(resp.Kvs))
		}
		if _, err := obs.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
			return Recovery{}, fmt.Errorf("revoke: %w", err)
		}
	case "wipe":
		if err := etcd.Wipe(); err != nil {
			return Recovery{}, err
		}
	}
	t0 := time.Now()
	if until(limit, 5*time.Millisecond, func() bool { return present(ctx, obs, p.prefix) }) {
		return Recovery{Ms: ms(time.Since(t0))}, nil
	}
	return Recovery{Never: true}, nil
}

// waitEvent waits for an event of type typ on wch.
func waitEvent(wch clientv3.WatchChan, typ mvccpb.Event_EventType, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		select {
		case resp, ok := <-wch:
			if !ok {
				return false
			}
			for _, ev := range resp.Events {
				if ev.Type == typ {
					return true
				}
			}
		case <-deadline:
			return false
		}
	}
}

func present(ctx context.Context, cli *clientv3.Client, prefix string) bool {
	c, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := cli.Get(c, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	return err == nil && resp.Count > 0
}
