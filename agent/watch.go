package agent

import (
	"context"
	"time"
)

// watch revokes e's registration as soon as its process exits.
func (a *Agent) watch(ctx context.Context, e *entry) {
	defer a.wg.Done()
	defer e.proc.close()
	err := e.proc.wait(ctx)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		// Not knowing is not dying: keep the registration, poll instead.
		a.log.Warn("pidfd wait failed; polling instead", "pid", e.pid, "error", err)
		if pollProc(e.pid, e.startTicks, a.cfg.PollInterval).wait(ctx) != nil {
			return
		}
	}
	seen := time.Now()
	removed, ok := a.remove(e, "exited")
	switch {
	case !ok:
	case removed:
		a.m.ExitToRemoval.Observe(time.Since(seen).Seconds())
		a.log.Info("worker exited; registration removed", "pid", e.pid, "job", e.job, "removed", removedKey(e), "after", time.Since(seen))
	default:
		a.log.Info("worker exited; its removal from etcd is pending", "pid", e.pid, "job", e.job)
	}
}

func (e *entry) watchMethod() string {
	if e.proc.usesPidfd() {
		return "pidfd"
	}
	return "poll"
}
