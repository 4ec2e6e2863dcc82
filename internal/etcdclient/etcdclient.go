// Package etcdclient builds the etcd client every workersd component uses.
//
// The defaults matter for recovery time: gRPC's reconnect backoff grows to two
// minutes, so after a long etcd outage a worker could stay unregistered long
// after etcd is back. Capping it keeps "back within TTL after etcd answers".
package etcdclient

import (
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/prometheus/common/config"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// MaxReconnectDelay caps gRPC's reconnect backoff.
const MaxReconnectDelay = time.Second

// unauthenticated is the token a client with a user and password starts
// with (see New): no etcd member issues it.
const unauthenticated = "workersd-not-authenticated-yet"

// New returns a client for endpoints. It does not block: with etcd down the
// client is returned and calls wait (bounded by their contexts) until it
// answers. cfg may carry TLS and auth; its endpoints are replaced.
//
// With a user and password, clientv3.New authenticates before it returns
// and fails when etcd cannot be reached, so a worker started during an
// etcd outage would not start at all. New starts the client with a token
// no member accepts instead, then gives it the user and password: the
// first call is refused (ErrInvalidAuthToken, or ErrUserEmpty), upon which
// the client authenticates and retries, as it does whenever a member
// forgets its token.
func New(endpoints []string, cfg clientv3.Config) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, fmt.Errorf("etcd client: no endpoints")
	}
	cfg.Endpoints = endpoints
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.DialKeepAliveTime == 0 {
		// Detect a dead member quickly enough to fail over within a TTL.
		cfg.DialKeepAliveTime = 2 * time.Second
		cfg.DialKeepAliveTimeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  100 * time.Millisecond,
			Multiplier: 1.6,
			Jitter:     0.2,
			MaxDelay:   MaxReconnectDelay,
		},
		MinConnectTimeout: 2 * time.Second,
	}))
	user, password := cfg.Username, cfg.Password
	lazy := user != "" && password != "" && cfg.Token == ""
	if lazy {
		cfg.Username, cfg.Password, cfg.Token = "", "", unauthenticated
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", endpoints, err)
	}
	if lazy {
		// No call has been made yet: nothing reads these concurrently.
		c.Token, c.Username, c.Password = "", user, password
	}
	return c, nil
}

// Auth builds the TLS and authentication part of a client configuration, as
// sdwriter's flags and YAML and the agent's flags give it. A password file
// overrides password; its trailing newline is not part of the password.
func Auth(tlsCfg config.TLSConfig, username, password, passwordFile string) (clientv3.Config, error) {
	var cfg clientv3.Config
	if tlsCfg != (config.TLSConfig{}) {
		t, err := config.NewTLSConfig(&tlsCfg)
		if err != nil {
			return cfg, fmt.Errorf("etcd TLS: %w", err)
		}
		t.MinVersion = max(t.MinVersion, tls.VersionTLS12)
		cfg.TLS = t
	}
	if passwordFile != "" {
		if username == "" {
			return cfg, fmt.Errorf("an etcd password file needs a user name")
		}
		b, err := os.ReadFile(passwordFile)
		if err != nil {
			return cfg, fmt.Errorf("etcd password file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	cfg.Username, cfg.Password = username, password
	return cfg, nil
}
