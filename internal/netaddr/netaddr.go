// Package netaddr finds the address a worker advertises. Package worker and
// the host agent must agree on it, so that a Go worker and a gunicorn worker
// on the same host are registered alike.
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
