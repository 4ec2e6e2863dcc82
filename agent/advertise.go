package agent

import (
	"fmt"
	"net"
	"strings"
)

// outboundIP is the local IP the kernel would use to reach endpoint: the
// address a worker advertises when it only says which port it listens on.
// A UDP "connection" only selects a route; no packet is sent.
//
// Copied from package worker (worker/config.go), whose default advertise
// address this must match; the two belong in one internal package.
func outboundIP(endpoint string) (net.IP, error) {
	hostport := endpoint
	if _, rest, ok := strings.Cut(endpoint, "://"); ok {
		hostport = rest
	}
	hostport, _, _ = strings.Cut(hostport, "/")
	conn, err := net.Dial("udp", hostport)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ua, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok || ua.IP.IsUnspecified() {
		return nil, fmt.Errorf("no local address for %s", hostport)
	}
	return ua.IP, nil
}
