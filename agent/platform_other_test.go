//go:build !linux

package agent

import (
	"errors"
	"testing"
)

// Elsewhere than Linux the agent compiles, and says at start-up why it
// cannot run instead of failing later on a worker's first registration.
func TestNewSaysItNeedsLinux(t *testing.T) {
	_, err := New(Config{})
	if !errors.Is(err, errUnsupported) {
		t.Fatalf("New on a non-Linux system: %v, want %v", err, errUnsupported)
	}
}
