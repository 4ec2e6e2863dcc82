package sdfile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

func group(source string, addrs []string, labels model.LabelSet) *targetgroup.Group {
	g := &targetgroup.Group{Source: source, Labels: labels}
	for _, a := range addrs {
		g.Targets = append(g.Targets, model.LabelSet{model.AddressLabel: model.LabelValue(a)})
	}
	return g
}

func TestRenderGolden(t *testing.T) {
	groups := []*targetgroup.Group{
		group("/p/b", []string{"10.0.0.2:2", "10.0.0.1:1"}, model.LabelSet{"job": "api", "instance": "h/1", "__meta_x": "q\"<&>"}),
		group("/p/a", []string{"10.0.0.3:3"}, model.LabelSet{"job": "api"}),
		group("/p/empty", nil, model.LabelSet{"job": "gone"}),
		group("/p/nolabels", []string{"10.0.0.4:4"}, nil),
	}
	want := `[
  {"targets":["10.0.0.3:3"],"labels":{"job":"api"}},
  {"targets":["10.0.0.1:1","10.0.0.2:2"],"labels":{"__meta_x":"q\"<&>","instance":"h/1","job":"api"}},
  {"targets":["10.0.0.4:4"]}
]
`
	if got := string(Render(groups)); got != want {
		t.Errorf("Render:\n%s\nwant:\n%s", got, want)
	}
	if got := string(Render(nil)); got != "[]\n" {
		t.Errorf("Render(nil) = %q, want []", got)
	}
	if got := string(Render(groups[2:3])); got != "[]\n" {
		t.Errorf("Render(only empty groups) = %q, want []", got)
	}
}

// Order of groups, targets and map iteration must not matter.
func TestRenderDeterministic(t *testing.T) {
	var groups []*targetgroup.Group
	for i := range 200 {
		labels := model.LabelSet{"job": model.LabelValue([]string{"a", "b", "c"}[i%3])}
		for j := range i % 7 {
			labels[model.LabelName("l"+string(rune('a'+j)))] = model.LabelValue(strings.Repeat("v", j))
		}
		groups = append(groups, group("/k/"+string(rune('a'+i%26))+"/"+string(rune('0'+i%10))+"/"+string(rune('A'+i%20)),
			[]string{"h:" + string(rune('1'+i%9))}, labels))
	}
	want := Render(groups)
	for range 20 {
		shuffled := append([]*targetgroup.Group(nil), groups...)
		rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		// Rebuild the label maps so their iteration order differs too.
		for i, g := range shuffled {
			c := *g
			c.Labels = model.LabelSet{}
			for n, v := range g.Labels {
				c.Labels[n] = v
			}
			shuffled[i] = &c
		}
		if got := Render(shuffled); !bytes.Equal(got, want) {
			t.Fatalf("render depends on order:\n%s\nvs\n%s", got, want)
		}
	}
	// Groups sharing a source: the last one counts, as in an update.
	withRemoval := append(append([]*targetgroup.Group(nil), groups...), &targetgroup.Group{Source: groups[0].Source})
	if got, want := Render(withRemoval), Render(groups[1:]); !bytes.Equal(got, want) {
		t.Errorf("a later empty group with the same source must remove the group:\n%s", got)
	}
}

// Targets with labels of their own cannot share an entry; they get their own,
// with target labels overriding group labels, as Prometheus applies them.
func TestRenderTargetLabels(t *testing.T) {
	g := &targetgroup.Group{
		Source: "s",
		Labels: model.LabelSet{"job": "j", "zone": "a"},
		Targets: []model.LabelSet{
			{model.AddressLabel: "h:2", "zone": "b"},
			{model.AddressLabel: "h:1"},
			{model.AddressLabel: ""},
		},
	}
	want := `[
  {"targets":["h:1"],"labels":{"job":"j","zone":"a"}},
  {"targets":["h:2"],"labels":{"job":"j","zone":"b"}}
]
`
	if got := string(Render([]*targetgroup.Group{g})); got != want {
		t.Errorf("Render:\n%s\nwant:\n%s", got, want)
	}
}

// The output is what Prometheus' file_sd and http_sd readers accept.
func TestRenderParsesAsTargetGroups(t *testing.T) {
	groups := []*targetgroup.Group{
		group("a", []string{"h:1"}, model.LabelSet{"job": "x", "__scheme__": "https", "v": "\x00\n\t\u2028\xff"}),
		group("b", []string{"h:2", "h:3"}, model.LabelSet{"job": "y"}),
	}
	var parsed []*targetgroup.Group
	if err := json.Unmarshal(Render(groups), &parsed); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	if len(parsed) != 2 || len(parsed[1].Targets) != 2 || parsed[0].Labels["__scheme__"] != "https" {
		t.Fatalf("parsed %v", parsed)
	}
	if got := parsed[0].Labels["v"]; got != "\x00\n\t\u2028\ufffd" {
		t.Errorf("label value round trip = %q", got)
	}
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `"\`, "<>&", "\x00\x01\x1f\x7f", "\b\f\n\r\t", "é€𝄞", "\xff\xfe", "a\xc3", "\u2028\u2029", "\ufffd"} {
		checkAppendString(t, s)
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a\"b", "\x00", "\xff", "\u2028", "é"} {
		f.Add(s)
	}
	f.Fuzz(checkAppendString)
}

func checkAppendString(t *testing.T, s string) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSuffix(buf.String(), "\n")
	if got := string(appendString(nil, s)); got != want {
		t.Errorf("appendString(%q) = %s, want %s", s, got, want)
	}
}

func TestStore(t *testing.T) {
	s := NewStore()
	s.Apply([]*targetgroup.Group{
		group("a", []string{"h:1"}, model.LabelSet{"job": "x"}),
		group("b", []string{"h:2", "h:3"}, model.LabelSet{"job": "y"}),
		nil,
	})
	if s.Len() != 2 || s.TargetsByJob()["x"] != 1 || s.TargetsByJob()["y"] != 2 {
		t.Fatalf("len %d, jobs %v", s.Len(), s.TargetsByJob())
	}
	s.Apply([]*targetgroup.Group{group("a", []string{"h:1"}, model.LabelSet{"job": "z"}), {Source: "b"}})
	if s.Len() != 1 || len(s.TargetsByJob()) != 1 || s.TargetsByJob()["z"] != 1 {
		t.Fatalf("after replace and remove: len %d, jobs %v", s.Len(), s.TargetsByJob())
	}
	want := "[\n  {\"targets\":[\"h:1\"],\"labels\":{\"job\":\"z\"}}\n]\n"
	if got := string(s.Bytes()); got != want {
		t.Errorf("Bytes = %q, want %q", got, want)
	}
	s.Apply([]*targetgroup.Group{{Source: "a"}, {Source: "never-seen"}})
	if got := string(s.Bytes()); got != "[]\n" || s.Len() != 0 || len(s.TargetsByJob()) != 0 {
		t.Errorf("after removing all: %q, len %d, jobs %v", got, s.Len(), s.TargetsByJob())
	}
}

// The order a Store keeps as sources come and go, one by one and in large
// batches, renders exactly what a full render of the same groups does.
func TestStoreOrderUnderChurn(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := NewStore()
	live := map[string]*targetgroup.Group{}
	for step := range 300 {
		var update []*targetgroup.Group
		n := 1 + rng.IntN(5)
		if step%50 == 0 {
			n = 200 // a large batch, as in a listing
		}
		for range n {
			src := fmt.Sprintf("/k/%d", rng.IntN(400))
			var g *targetgroup.Group
			if rng.IntN(3) == 0 {
				g = &targetgroup.Group{Source: src} // removal
				delete(live, src)
			} else {
				g = group(src, []string{fmt.Sprintf("10.0.%d.%d:9100", step%250, rng.IntN(250))}, model.LabelSet{"job": "j"})
				live[src] = g
			}
			update = append(update, g)
		}
		s.Apply(update)
		if step%7 != 0 {
			continue // several updates between renders, as under a write wait
		}
		want := Render(slices.Collect(maps.Values(live)))
		if got := s.Bytes(); !bytes.Equal(got, want) {
			t.Fatalf("step %d: the Store renders\n%s\nwant\n%s", step, got, want)
		}
		if s.Len() != len(live) {
			t.Fatalf("step %d: Len %d, want %d", step, s.Len(), len(live))
		}
	}
}
