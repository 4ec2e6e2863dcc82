//go:build !unix

package agent

import (
	"net"
	"os"
)

// listenUnixWithMode: no umask here; the caller's chmod sets the mode.
func listenUnixWithMode(path string, _ os.FileMode) (net.Listener, error) {
	return net.Listen("unix", path)
}
