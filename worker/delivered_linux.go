//go:build linux

package worker

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// TCP states (include/net/tcp_states.h).
const (
	tcpEstablished = 1
	tcpCloseWait   = 8
)

// unackedBytes reports how many bytes written to c its peer has not yet
// acknowledged (SIOCOUTQ: sent but unacknowledged, plus not sent yet), or
// -1 once the connection is no longer established (a reset empties the
// queue: that is no delivery); ok is false when c is no TCP socket whose
// queue the kernel reports.
func unackedBytes(c net.Conn) (n int, ok bool) {
	sc, isSys := c.(syscall.Conn)
	if !isSys {
		return 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var ierr error
	var state uint8
	if err := rc.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		if info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); ierr != nil {
			return
		}
		state = info.State
		n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
	}); err != nil || ierr != nil {
		return 0, false
	}
	// Established, or the peer closed its side (it sends no more requests
	// but reads on).
	if state != tcpEstablished && state != tcpCloseWait {
		return -1, true
	}
	return n, true
}
