//go:build linux

package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"
)

// traffic sends requests to one host's gunicorn at a steady pace, each on
// a connection of its own, and counts the answers: that is the truth of
// the request counters. A request whose connection was refused or never
// made was never served; one that failed after its connection was made may
// have been counted by a worker and is ambiguous (the run avoids those:
// traffic pauses before a link is cut or a worker is killed).
type traffic struct {
	addr  string
	every time.Duration
	rng   *rand.Rand // which requests ask for a missing page

	mu       sync.Mutex
	cond     *sync.Cond
	paused   int // pause holders
	inflight int
	stopped  bool
	ok       int // 200
	notFound int // 404
	refused  int // no connection: not served
	ambigN   int
	ambig    []string // the first few
	done     chan struct{}
}

func newTraffic(addr string, every time.Duration, seed uint64) *traffic {
	t := &traffic{addr: addr, every: every, rng: rand.New(rand.NewPCG(seed, 7)), done: make(chan struct{})}
	t.cond = sync.NewCond(&t.mu)
	return t
}

func (t *traffic) run() {
	defer close(t.done)
	tick := time.NewTicker(t.every)
	defer tick.Stop()
	for range tick.C {
		t.mu.Lock()
		for t.paused > 0 && !t.stopped {
			t.cond.Wait()
		}
		if t.stopped {
			t.mu.Unlock()
			return
		}
		if t.inflight >= 8 {
			t.mu.Unlock()
			continue
		}
		t.inflight++
		path := "/"
		if t.rng.IntN(5) == 4 {
			path = "/missing"
		}
		t.mu.Unlock()
		go t.request(path)
	}
}

func (t *traffic) request(path string) {
	code, dialed, err := get(t.addr, path)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.inflight--
	t.cond.Broadcast()
	switch {
	case err == nil && code == 200:
		t.ok++
	case err == nil && code == 404:
		t.notFound++
	case !dialed:
		t.refused++
	default:
		t.ambigN++
		if len(t.ambig) < 10 {
			t.ambig = append(t.ambig, fmt.Sprintf("%s GET %s: code %d, %v", time.Now().Format("15:04:05.000"), path, code, err))
		}
	}
}

// get sends one HTTP/1.0 request on a new connection and reads the status.
func get(addr, path string) (code int, dialed bool, err error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return 0, false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: soak\r\n\r\n", path); err != nil {
		return 0, true, err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, true, err
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0, true, fmt.Errorf("status line %q", line)
	}
	if _, err := fmt.Sscanf(f[1], "%d", &code); err != nil {
		return 0, true, fmt.Errorf("status line %q", line)
	}
	// The whole answer: the worker counted before it answered.
	for {
		if _, err := r.ReadString('\n'); err != nil {
			break
		}
	}
	return code, true, nil
}

// pause stops new requests and waits until none is in flight.
func (t *traffic) pause() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.paused++
	for t.inflight > 0 {
		t.cond.Wait()
	}
}

func (t *traffic) resume() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.paused--
	t.cond.Broadcast()
}

// stop ends the traffic once nothing is in flight.
func (t *traffic) stop() {
	t.mu.Lock()
	t.stopped = true
	t.cond.Broadcast()
	for t.inflight > 0 {
		t.cond.Wait()
	}
	t.mu.Unlock()
	<-t.done
}

func (t *traffic) counts() (ok, notFound, refused, ambiguous int, first []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ok, t.notFound, t.refused, t.ambigN, append([]string(nil), t.ambig...)
}
