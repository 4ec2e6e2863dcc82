package strictjson

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

type inner struct {
	Name string `json:"name"`
}

type embedded struct {
	Extra string `json:"extra,omitempty"`
}

type doc struct {
	embedded
	Address   string            `json:"address"`
	Port      int               `json:"port,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	StartedAt time.Time         `json:"started_at,omitzero"`
	Inner     *inner            `json:"inner,omitempty"`
	List      []inner           `json:"list,omitempty"`
	Any       any               `json:"any,omitempty"`
	Plain     string
	Skipped   string `json:"-"`
	hidden    string
}

func TestAcceptsWhatEncodingJSONWrites(t *testing.T) {
	in := doc{embedded: embedded{Extra: "e"}, Address: "127.0.0.1:80", Port: 80, Labels: map[string]string{"a": "1", "b": "2"},
		StartedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Inner: &inner{Name: "n"}, List: []inner{{"x"}, {"y"}},
		Any: map[string]any{"k": []any{1.0, "s", nil, true}}, Plain: "p"}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out doc
	if err := Unmarshal(append(append([]byte(" \n"), b...), "\t\r\n"...), &out); err != nil {
		t.Fatalf("Unmarshal(%s): %v", b, err)
	}
	again, _ := json.Marshal(out)
	if string(again) != string(b) {
		t.Fatalf("round trip: %s, want %s", again, b)
	}
	// Escaped keys that are exactly a field's name are that field.
	if err := Unmarshal([]byte(`{"\u0061ddress":"x","labels":{"\u00e9":"1","e\u0301":"2"}}`), &out); err != nil || out.Address != "x" {
		t.Fatalf("escaped key: %v, %+v", err, out)
	}
}

func TestRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, doc, field, msg string
	}{
		{"duplicate field", `{"address":"127.0.0.1:80","address":"169.254.169.254:80"}`, "address", "duplicate key"},
		{"wrong case", `{"address":"127.0.0.1:80","Address":"169.254.169.254:80"}`, "Address", `case-sensitive: "address"`},
		{"wrong case alone", `{"ADDRESS":"169.254.169.254:80"}`, "ADDRESS", "case-sensitive"},
		{"Unicode folding", `{"addreſs":"169.254.169.254:80"}`, "addreſs", "unknown field"},
		{"Go field name for a tagged field", `{"Port":1}`, "Port", "case-sensitive"},
		{"skipped field", `{"Skipped":"x"}`, "Skipped", "unknown field"},
		{"unexported field", `{"hidden":"x"}`, "hidden", "unknown field"},
		{"unknown field", `{"address":"x","x":1}`, "x", "unknown field"},
		{"duplicate after unescaping", `{"address":"a","\u0061ddress":"b"}`, "address", "duplicate key"},
		{"duplicate label", `{"labels":{"a":"1","b":"2","a":"3"}}`, "labels.a", "duplicate key"},
		{"duplicate label after UTF-8 repair", "{\"labels\":{\"a\xff\":\"1\",\"a\xfe\":\"2\"}}", "labels.a\uFFFD", "duplicate key"},
		{"duplicate in an opaque value", `{"any":{"k":1,"k":2}}`, "any.k", "duplicate key"},
		{"duplicate in an array element", `{"list":[{"name":"a"},{"name":"b","name":"c"}]}`, "list[1].name", "duplicate key"},
		{"unknown in an array element", `{"list":[{"Name":"a"}]}`, "list[0].Name", "case-sensitive"},
		{"unknown in a pointer", `{"inner":{"nom":"a"}}`, "inner.nom", "unknown field"},
		{"embedded field in its own name", `{"embedded":{}}`, "embedded", "unknown field"},
		{"wrong type", `{"port":"80"}`, "port", "string"},
		{"wrong type in a map", `{"labels":{"a":1}}`, "labels", "number"},
		{"trailing data", `{"address":"x"}{}`, "", "data after"},
		{"trailing garbage", `{"address":"x"} x`, "", "data after"},
		{"empty", ` `, "", "empty"},
		{"truncated", `{"address":`, "", "unexpected end"},
		{"bad number", `{"port":01}`, "", "invalid JSON"},
		{"bad escape", `{"address":"\x"}`, "", "invalid escape"},
		{"control character", "{\"address\":\"a\nb\"}", "", "control character"},
		{"single quotes", `{'address':'x'}`, "", "invalid JSON"},
		{"trailing comma", `{"address":"x",}`, "", "invalid JSON"},
		{"too deep", `{"any":` + strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1) + `}`, "any" + strings.Repeat("[0]", MaxDepth), "nested deeper"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d doc
			err := Unmarshal([]byte(tc.doc), &d)
			var e *Error
			if !errors.As(err, &e) || e.Field != tc.field || !strings.Contains(e.Msg, tc.msg) {
				t.Fatalf("Unmarshal(%.80q) = %.200v (field %.80q), want an *Error on %.80q saying %q", tc.doc, err, errField(e), tc.field, tc.msg)
			}
			if e.Unknown != strings.Contains(tc.msg, "unknown field") && e.Unknown != strings.Contains(tc.msg, "case-sensitive") {
				t.Errorf("Unknown is %v", e.Unknown)
			}
			if json.Valid([]byte(tc.doc)) && tc.field != "" && !strings.Contains(err.Error(), tc.field+": ") {
				t.Errorf("message %q does not name the field", err)
			}
		})
	}
}

func errField(e *Error) string {
	if e == nil {
		return "<none>"
	}
	return e.Field
}

// Whatever encoding/json finds invalid, Unmarshal does too; what it finds
// valid and free of duplicates and unknown keys, Unmarshal decodes alike.
func FuzzUnmarshal(f *testing.F) {
	for _, s := range []string{`{"address":"x","labels":{"a":"b"}}`, `{"any":[1,-2.5e+3,true,null,{"a":{}}]}`, `"x"`, `{"list":[{"name":"\ud83d\ude00"}]}`, `{"port":1e2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var strict, loose doc
		err := Unmarshal(b, &strict)
		if !json.Valid(b) {
			if err == nil {
				t.Fatalf("accepted invalid JSON %q", b)
			}
			return
		}
		if err != nil {
			return
		}
		if lerr := json.Unmarshal(b, &loose); lerr != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", b, lerr)
		}
		sb, _ := json.Marshal(strict)
		lb, _ := json.Marshal(loose)
		if string(sb) != string(lb) {
			t.Fatalf("%q: decoded %s, encoding/json %s", b, sb, lb)
		}
	})
}

// The walk before the decode, for a registration as sdwriter reads it.
func BenchmarkUnmarshal(b *testing.B) {
	data := []byte(`{"address":"10.0.0.5:40211","metrics_path":"/metrics/4242-0123456789abcdef","pid":4242,"started_at":"2026-11-21T10:00:00Z","labels":{"version":"1.4.2"}}`)
	type value struct {
		Address     string            `json:"address"`
		Scheme      string            `json:"scheme,omitempty"`
		MetricsPath string            `json:"metrics_path,omitempty"`
		PID         int               `json:"pid,omitempty"`
		StartedAt   time.Time         `json:"started_at,omitzero"`
		Labels      map[string]string `json:"labels,omitempty"`
	}
	b.Run("strictjson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v value
			if err := Unmarshal(data, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v value
			if err := json.Unmarshal(data, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
}
