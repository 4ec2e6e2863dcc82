// Package logtest holds what tests need to read a component's log: one
// home for the goroutine-safe buffer every such test used to copy.
package logtest

import (
	"strings"
	"sync"
)

// Buffer is a log output that a test reads while the component writes.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
