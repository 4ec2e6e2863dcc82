//go:build unix

package agent

import (
	"net"
	"os"
	"syscall"
)

// listenUnixWithMode creates the socket under a umask that leaves no window
// in which it is reachable with a wider mode than mode.
func listenUnixWithMode(path string, mode os.FileMode) (net.Listener, error) {
	old := syscall.Umask(0o777 &^ int(mode.Perm()))
	defer syscall.Umask(old)
	return net.Listen("unix", path)
}
