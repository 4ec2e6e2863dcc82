//go:build linux

package agent

import (
	"context"
	"fmt"
	"os/exec"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
)

// Issue 13, acceptance 5: by default, every worker's key is on the
// agent's one lease and every hold on its one hold lease; kill -9 of a
// worker still removes its key within 200 ms and moves its hold onto a
// lease of its own; an agent restart adopts the live workers (same keys,
// same lease, no duplicate) and releases the worker that died meanwhile;
// a stopped agent's keys expire with the TTL.
func TestSharedLeaseAgent(t *testing.T) {
	// A TTL that outlasts the restart below on a loaded machine: the
	// test is about adoption, not about a restart racing the TTL.
	h := newHarness(t, nil, func(c *Config) { c.SlotHold = time.Second; c.TTL = 5 * time.Second })
	cs := h.registerChildren(3)
	shared := h.agent.hostLease()
	for k, l := range h.leases() {
		if clientv3.LeaseID(l) != shared {
			t.Fatalf("%s on lease %x, want the shared %x", k, l, shared)
		}
	}
	holds := func() map[string]int64 { return h.leasesUnder(registrar.HoldPrefix(prefix)) }
	for k, l := range holds() {
		if clientv3.LeaseID(l) != h.agent.hostHoldLease() {
			t.Fatalf("hold %s on lease %x, want the shared hold lease %x", k, l, h.agent.hostHoldLease())
		}
	}

	// kill -9 of the first worker.
	var key string
	for _, w := range h.agent.List() {
		if w.PID == cs[0].Process.Pid {
			key = w.Key
		}
	}
	gone := watchDelete(t, h.cli, key)
	killed := time.Now()
	cs[0].Process.Signal(syscall.SIGKILL)
	select {
	case at := <-gone:
		took := at.Sub(killed)
		t.Logf("key removed %s after SIGKILL", took)
		if took > 200*time.Millisecond {
			t.Errorf("key removed %s after SIGKILL, goal 200ms", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("key not removed 5s after SIGKILL")
	}
	k, _ := registrar.ParseKey(prefix, key)
	if l := holds()[k.HoldKey()]; l == 0 || clientv3.LeaseID(l) == h.agent.hostHoldLease() {
		t.Errorf("the dead worker's hold is on lease %x, want one of its own", l)
	}
	if n := len(h.leases()); n != 2 {
		t.Fatalf("%d keys, want the 2 live workers'", n)
	}

	// Restart, with the second worker dying while the agent is down.
	before := h.leases()
	h.stop()
	cs[1].Process.Kill()
	cs[1].Wait()
	h.start()
	if h.agent.hostLease() != shared {
		t.Fatalf("the restarted agent holds lease %x, want the shared %x resumed", h.agent.hostLease(), shared)
	}
	poll.Until(t, 5*time.Second, func() bool { return len(h.leases()) == 1 }, "the key of the worker that died during the restart released")
	deadline := time.Now().Add(h.cfg.TTL + time.Second)
	for time.Now().Before(deadline) {
		got := h.leases()
		if len(got) != 1 {
			t.Fatalf("after restart: %v", got)
		}
		for k, l := range got {
			if before[k] != l || clientv3.LeaseID(l) != shared {
				t.Fatalf("after restart %s on %x, want the adopted key on the shared lease %x", k, l, shared)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ws := h.agent.List(); len(ws) != 1 || ws[0].PID != cs[2].Process.Pid {
		t.Fatalf("adopted: %+v", ws)
	}
	st, err := readState(h.cfg.StateFile)
	if err != nil || st.SharedLease != shared || st.SharedHoldLease == 0 {
		t.Fatalf("state file: %+v, %v; want the shared leases", st, err)
	}

	// The agent stops for good: the key expires with the TTL.
	h.stop()
	poll.Until(t, 3*h.cfg.TTL, func() bool { return len(h.leases()) == 0 }, "keys expiring with the shared lease")
}

// An agent restarted with the other --lease keeps its live workers on
// their slots: each key moves onto the new mode's lease in place (a new
// slot would start new series for a live worker). Afterwards a worker's
// exit removes its key alone: on the way back from a shared lease, the old
// lease is not revoked, which would delete every other key on it.
func TestLeaseModeSwitchKeepsSlots(t *testing.T) {
	for _, toShared := range []bool{true, false} {
		t.Run(map[bool]string{true: "per-worker to per-host", false: "per-host to per-worker"}[toShared], func(t *testing.T) {
			h := newHarness(t, nil, func(c *Config) { c.LeasePerWorker = toShared; c.SlotHold = time.Second })
			cs := h.registerChildren(2)
			before := h.leases()
			keyOf := map[int]string{}
			for _, w := range h.agent.List() {
				keyOf[w.PID] = w.Key
			}
			h.stop()
			resp, err := h.cli.Get(context.Background(), prefix, clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			wch := h.cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))

			h.cfg.LeasePerWorker = !toShared
			h.start()
			defer h.stop()
			var last string
			poll.Until(t, 15*time.Second, func() bool {
				now, holds := h.leases(), h.leasesUnder(registrar.HoldPrefix(prefix))
				last = fmt.Sprint(now, holds)
				return onNewLeases(h, before, now, toShared) && holdsMoved(h, holds, toShared)
			}, "keys and holds %s, want the keys of before (%v) and their holds on the new mode's leases", poll.Latest(&last), before)

			cs[0].Process.Kill()
			cs[0].Wait()
			poll.Until(t, 15*time.Second, func() bool { _, ok := h.leases()[keyOf[cs[0].Process.Pid]]; return !ok },
				"the killed worker's key removed")
			time.Sleep(h.cfg.TTL) // anything that a revoke of a shared lease would do, done
			cancel()
			checkKeyEvents(t, wch, before, keyOf[cs[1].Process.Pid])
			if ls := h.leases(); len(ls) != 1 {
				t.Errorf("keys %v, want the live worker's only", ls)
			}
		})
	}
}

// onNewLeases: after a switch of lease mode, the keys are those of before,
// on the agent's one lease (toShared), or on one lease each (the last key
// left on the old shared lease may keep it: nothing else is on it any
// more).
func onNewLeases(h *harness, before, now map[string]int64, toShared bool) bool {
	if len(now) != len(before) {
		return false
	}
	distinct := map[int64]bool{}
	for k, l := range now {
		if _, ok := before[k]; !ok {
			return false
		}
		if toShared && clientv3.LeaseID(l) != h.agent.hostLease() {
			return false
		}
		distinct[l] = true
	}
	return toShared || len(distinct) == len(now)
}

// holdsMoved: the two holds likewise, on the agent's hold lease, or on one
// each (not on the old shared one, kept alive by whoever lives).
func holdsMoved(h *harness, holds map[string]int64, toShared bool) bool {
	distinct := map[int64]bool{}
	for _, l := range holds {
		if toShared && clientv3.LeaseID(l) != h.agent.hostHoldLease() {
			return false
		}
		distinct[l] = true
	}
	return len(holds) == 2 && (toShared || len(distinct) == 2)
}

// checkKeyEvents reads wch to its end: no key but those of before was
// written, and the live worker's key was never deleted.
func checkKeyEvents(t *testing.T, wch clientv3.WatchChan, before map[string]int64, liveKey string) {
	t.Helper()
	for wr := range wch {
		for _, ev := range wr.Events {
			k := string(ev.Kv.Key)
			if _, ok := before[k]; !ok {
				t.Errorf("%s %s: a key the workers did not have before the restart", ev.Type, k)
			}
			if k == liveKey && ev.Type == clientv3.EventTypeDelete {
				t.Errorf("the live worker's key %s was deleted", k)
			}
		}
	}
}

// registerChildren starts n processes and registers each for job api on
// ports 9100 and up.
func (h *harness) registerChildren(n int) []*exec.Cmd {
	h.t.Helper()
	var cs []*exec.Cmd
	for i := range n {
		c := child(h.t)
		if code, w := h.do("POST", "/v1/workers", map[string]any{"job": "api", "port": 9100 + i, "pid": c.Process.Pid}); code != 201 || w["state"] != "registered" {
			h.t.Fatalf("register: %d %v", code, w)
		}
		cs = append(cs, c)
	}
	return cs
}
