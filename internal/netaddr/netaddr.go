// Package netaddr holds the address policies: the address a worker
// advertises (package worker and the host agent must agree on it, so that a
// Go worker and a gunicorn worker on the same host are registered alike),
// and which listen addresses count as local.
package netaddr

import (
	"fmt"
	"net"
	"strings"
)

// OutboundIP is the local IP the kernel would use to reach endpoint (host:port
// or a URL): the address Prometheus on another host can reach this one at.
// A UDP "connection" only selects a route; no packet is sent.
func OutboundIP(endpoint string) (net.IP, error) {
	hostport := endpoint
	if _, rest, ok := strings.Cut(endpoint, "://"); ok {
		hostport = rest
	}
	hostport, _, _ = strings.Cut(hostport, "/")
	conn, err := net.Dial("udp", hostport)
	if err != nil {
		return nil, fmt.Errorf("route to %s: %w", hostport, err)
	}
	defer conn.Close()
	ua, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok || ua.IP.IsUnspecified() {
		return nil, fmt.Errorf("no local address for %s", hostport)
	}
	return ua.IP, nil
}

// CheckLoopback refuses a listen address (host:port) other hosts could
// reach: services without authentication (the agent's API, sdwriter's
// embedded etcd) listen on loopback unless told otherwise.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address", addr)
	}
	return nil
}

// AdvertiseHost is the host part of the address registered for a worker
// that is known only by its port: configured when set; else the local IP
// this host uses to reach the first etcd endpoint, so that a Prometheus on
// another host of the same network reaches the worker; else the host name,
// after calling warn with why the route could not be found.
func AdvertiseHost(configured string, etcdEndpoints []string, hostname string, warn func(endpoint string, err error)) string {
	if configured != "" {
		return strings.Trim(configured, "[]")
	}
	if len(etcdEndpoints) == 0 {
		return hostname
	}
	ip, err := OutboundIP(etcdEndpoints[0])
	if err != nil {
		warn(etcdEndpoints[0], err)
		return hostname
	}
	return ip.String()
}
