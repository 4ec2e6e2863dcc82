package agent

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// SocketMode is the mode of the API's Unix socket.
const SocketMode = 0o660

// ListenSocket listens on a Unix socket with SocketMode (0660), so only
// the agent's user and group can register workers, replacing a stale
// socket file left by a crash but not a live agent's socket.
func ListenSocket(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another agent is listening on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := listenUnixWithMode(path, SocketMode)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, SocketMode); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
