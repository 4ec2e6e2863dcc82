package registrar_test

import (
	"testing"
	"time"

	"github.com/workersd/workersd/registrar"
)

func TestHoldKeyLivesBesideThePrefix(t *testing.T) {
	k := registrar.Key{Prefix: "/workersd/v1/", Job: "api", Host: "web-1", Slot: 3}
	if got, want := k.HoldKey(), "/workersd/v1.hold/api/web-1/3"; got != want {
		t.Fatalf("HoldKey = %q, want %q", got, want)
	}
	// Not under the prefix: a reader listing registrations never sees it.
	if _, err := registrar.ParseKey(k.Prefix, k.HoldKey()); err == nil {
		t.Fatal("a hold key parses as a registration")
	}
	if got, want := k.HoldSlotPrefix(), "/workersd/v1.hold/api/web-1/"; got != want {
		t.Fatalf("HoldSlotPrefix = %q, want %q", got, want)
	}
	// And back: the registration whose slot it holds.
	if got, err := registrar.ParseHoldKey(k.Prefix, k.HoldKey()); err != nil || got != k {
		t.Fatalf("ParseHoldKey(%q) = %+v, %v; want %+v", k.HoldKey(), got, err, k)
	}
	if _, err := registrar.ParseHoldKey(k.Prefix, k.String()); err == nil {
		t.Fatal("a registration's key parses as a hold")
	}
}

func TestEffectiveSlotHold(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{
		0:                registrar.DefaultSlotHold, // not set
		-1:               0,                         // off
		-time.Hour:       0,
		time.Second:      time.Second,
		45 * time.Second: 45 * time.Second,
	} {
		if got := registrar.EffectiveSlotHold(in); got != want {
			t.Errorf("EffectiveSlotHold(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestMaxSlots(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s ...int) []time.Time {
		var ts []time.Time
		for _, x := range s {
			ts = append(ts, t0.Add(time.Duration(x)*time.Second))
		}
		return ts
	}
	const ttl, hold = 10 * time.Second, 30 * time.Second // window 60s, 61s with etcd's expiry lag
	for _, c := range []struct {
		name string
		peak int
		ends []time.Time
		hold time.Duration
		want int
	}{
		{"no restarts", 4, nil, hold, 4},
		{"restarts far apart", 4, at(0, 62, 124), hold, 5},
		{"etcd expires holds up to a second late", 4, at(0, 61), hold, 6},
		{"a burst", 4, at(0, 1, 2, 3), hold, 8},
		{"the busiest window counts", 4, at(0, 100, 130, 160, 162), hold, 7},
		{"unsorted input", 4, at(160, 0, 130, 100), hold, 7},
		{"holds off", 4, at(0, 1, 2), -1, 4},
	} {
		if got := registrar.MaxSlots(c.peak, c.ends, ttl, c.hold); got != c.want {
			t.Errorf("%s: MaxSlots = %d, want %d", c.name, got, c.want)
		}
	}
}
