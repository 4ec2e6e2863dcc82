// Package procgroup is the one way workersd's tests, the soak and the demo
// start a child process: in a process group of its own. A signal to the
// group then reaches everything the child started (a pre-fork server's
// workers, a shell's or a test runner's children) and nothing else, and
// Ctrl-C at the parent's terminal reaches the parent only, which stops its
// children in its own order. On Linux the child is also killed when its
// parent dies without cleaning up (Pdeathsig), so no child outlives a test
// binary killed by its timeout.
//
// Pdeathsig fires when the thread that started the child ends, not the
// process; Go ends a thread only under a goroutine that locked it
// (runtime.LockOSThread) and exits, which none of the callers do.
package procgroup
