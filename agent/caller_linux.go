package agent

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// peerCredentials reads SO_PEERCRED: the uid and pid of the process that
// connected, as the kernel recorded them at connect time.
func peerCredentials(c *net.UnixConn) (Caller, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Caller{}, err
	}
	if serr != nil {
		return Caller{}, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	// The kernel gives the peer's pid as the agent's PID namespace sees
	// it: 0 when that namespace does not contain the peer.
	return Caller{UID: int(cred.Uid), PID: int(cred.Pid), Trusted: cred.Uid == 0, PIDUnseen: cred.Pid == 0}, nil
}
