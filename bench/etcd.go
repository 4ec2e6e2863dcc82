package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/embedetcd"
	"github.com/workersd/workersd/internal/etcdclient"
)

// etcdMember is one embedded etcd member on loopback. Wipe replaces it by a
// new, empty cluster on the same ports: what clients see when etcd is
// rebuilt from scratch (no keys, no leases).
type etcdMember struct {
	root, client, peer string

	mu    sync.Mutex
	srv   *embedetcd.Server
	epoch int
}

func startEtcd(root string) (*etcdMember, error) {
	client, err := freeAddr()
	if err != nil {
		return nil, err
	}
	peer, err := freeAddr()
	if err != nil {
		return nil, err
	}
	m := &etcdMember{root: root, client: client, peer: peer}
	if err := m.start(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *etcdMember) start() error {
	srv, err := embedetcd.Start(embedetcd.Config{
		Dir:           filepath.Join(m.root, fmt.Sprintf("etcd-%d", m.epoch)),
		ClientAddr:    m.client,
		PeerAddr:      m.peer,
		ClusterToken:  fmt.Sprintf("bench-%d", m.epoch),
		UnsafeNoFsync: true,
	})
	if err != nil {
		return err
	}
	m.srv = srv
	return nil
}

func (m *etcdMember) Endpoint() string { return m.client }

// Client returns a client built the way every workersd component builds it.
func (m *etcdMember) Client() (*clientv3.Client, error) {
	return etcdclient.New([]string{m.client}, clientv3.Config{})
}

// Wipe stops the member and starts a new cluster with no data on the same
// ports; it returns once the new member serves.
func (m *etcdMember) Wipe() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.srv != nil {
		m.srv.Close()
		m.srv = nil
	}
	os.RemoveAll(filepath.Join(m.root, fmt.Sprintf("etcd-%d", m.epoch)))
	m.epoch++
	return m.start()
}

func (m *etcdMember) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.srv != nil {
		m.srv.Close()
		m.srv = nil
	}
	os.RemoveAll(filepath.Join(m.root, fmt.Sprintf("etcd-%d", m.epoch)))
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}
