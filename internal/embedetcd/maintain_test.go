package embedetcd

import "testing"

// The defragmentation policy: a file mostly free and above the floor is
// defragmented, online only below the size-in-use bound; under NOSPACE,
// once after each compaction until the file is under the disarm mark.
func TestDecide(t *testing.T) {
	const mib = 1 << 20
	quota := int64(2 << 30)
	var m Maintenance
	for _, c := range []struct {
		name               string
		size, inUse, quota int64
		noSpace, compacted bool
		want               action
	}{
		{"small file, mostly free", 10 * mib, 1 * mib, quota, false, true, keep},
		{"large file, mostly used", 200 * mib, 150 * mib, quota, false, true, keep},
		{"large file, half free", 200 * mib, 100 * mib, quota, false, false, defrag},
		{"huge file, mostly free, too much in use to pause for", 1500 * mib, 600 * mib, quota, false, true, tooLarge},
		{"a small quota lowers the floor", 2 * mib, 512 << 10, 4 * mib, false, false, defrag},
		{"NOSPACE, compacted since", 4 * mib, 4 * mib, 4 * mib, true, true, defrag},
		{"NOSPACE, no compaction since the last defragmentation", 4 * mib, 1 * mib, 4 * mib, true, false, keep},
		{"NOSPACE, already under the mark (a larger quota)", 3 * mib, 3 * mib, 4 * mib, true, true, keep},
	} {
		if got := m.decide(c.size, c.inUse, c.quota, c.noSpace, c.compacted); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	if got := (Maintenance{MinSize: 300 * mib}).decide(200*mib, 10*mib, quota, false, true); got != keep {
		t.Errorf("MinSize not applied: %v", got)
	}
	if got := (Maintenance{MaxInUse: 1 << 30}).decide(1500*mib, 600*mib, quota, false, true); got != defrag {
		t.Errorf("MaxInUse not applied: %v", got)
	}
}
