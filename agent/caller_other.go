//go:build !linux

package agent

import "net"

// peerCredentials: the agent runs on Linux only (see New).
func peerCredentials(c *net.UnixConn) (Caller, error) { return Caller{}, errUnsupported }
