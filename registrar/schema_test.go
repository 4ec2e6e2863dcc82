package registrar_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/workersd/workersd/registrar"
)

func TestDecodeRoundTripsWhatTheWriterEncodes(t *testing.T) {
	v := registrar.Value{Address: "10.0.0.5:40211", Scheme: "https", MetricsPath: "/m", PID: 4242,
		Labels: map[string]string{"version": "1.4.2"}}
	b, err := v.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := registrar.Decode(registrar.DefaultPrefix, []byte("/workersd/v1/api/web-1/3"), b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Job != "api" || got.Host != "web-1" || got.Slot != 3 || got.Instance() != "web-1/3" ||
		got.Address != v.Address || got.Scheme != "https" || got.MetricsPath != "/m" || got.PID != 4242 || got.Labels["version"] != "1.4.2" {
		t.Fatalf("decoded %+v", got)
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	good := `{"address":"10.0.0.5:1"}`
	cases := []struct{ name, key, value, field string }{
		{"bad json", "/workersd/v1/a/h/0", `{"address":`, "value"},
		{"unknown field", "/workersd/v1/a/h/0", `{"address":"10.0.0.5:1","x":1}`, "value"},
		// Issue 21: encoding/json let the last duplicate win and matched
		// names case-insensitively; the second address became the target.
		{"duplicate address", "/workersd/v1/a/h/0", `{"address":"127.0.0.1:9000","address":"169.254.169.254:80"}`, "address"},
		{"address in another case", "/workersd/v1/a/h/0", `{"address":"127.0.0.1:9000","Address":"169.254.169.254:80"}`, "value"},
		{"only another case", "/workersd/v1/a/h/0", `{"ADDRESS":"169.254.169.254:80"}`, "value"},
		{"Unicode case folding", "/workersd/v1/a/h/0", `{"addreſs":"169.254.169.254:80"}`, "value"},
		{"duplicate after unescaping", "/workersd/v1/a/h/0", `{"address":"127.0.0.1:9000","\u0061ddress":"169.254.169.254:80"}`, "address"},
		{"duplicate metrics path", "/workersd/v1/a/h/0", `{"address":"127.0.0.1:9000","metrics_path":"/m","metrics_path":"/latest/meta-data/"}`, "metrics_path"},
		{"duplicate label", "/workersd/v1/a/h/0", `{"address":"10.0.0.5:1","labels":{"env":"prod","env":"dev"}}`, "labels.env"},
		{"wrong type", "/workersd/v1/a/h/0", `{"address":"10.0.0.5:1","pid":"1"}`, "pid"},
		{"trailing data", "/workersd/v1/a/h/0", good + `{}`, "value"},
		{"address label override", "/workersd/v1/a/h/0", `{"address":"10.0.0.5:1","labels":{"__address__":"evil:1"}}`, "labels.__address__"},
		{"invalid label name", "/workersd/v1/a/h/0", `{"address":"10.0.0.5:1","labels":{"a-b":"1"}}`, "labels.a-b"},
		{"invalid utf8", "/workersd/v1/a/h/0", "{\"address\":\"10.0.0.5:1\",\"labels\":{\"a\":\"\xff\"}}", "value"},
		{"huge", "/workersd/v1/a/h/0", `{"address":"10.0.0.5:1","labels":{"a":"` + strings.Repeat("x", 1<<20) + `"}}`, "value"},
		{"no address", "/workersd/v1/a/h/0", `{}`, "address"},
		{"key too short", "/workersd/v1/a/0", good, "key"},
		{"key too long", "/workersd/v1/a/h/0/x", good, "key"},
		{"slot not a number", "/workersd/v1/a/h/x", good, "slot"},
		{"slot with leading zero", "/workersd/v1/a/h/01", good, "slot"},
		{"slot negative", "/workersd/v1/a/h/-1", good, "slot"},
		{"other prefix", "/other/a/h/0", good, "key"},
		{"empty job", "/workersd/v1//h/0", good, "job"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := registrar.Decode(registrar.DefaultPrefix, []byte(tc.key), []byte(tc.value))
			var fe *registrar.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("Decode error %v, want a FieldError on %q", err, tc.field)
			}
		})
	}
}

// Issue 21: a key in another case than the field's is refused, and the
// message names both, so whoever wrote it can tell what to fix.
func TestDecodeNamesTheKeyInAnotherCase(t *testing.T) {
	_, err := registrar.DecodeValue([]byte(`{"address":"127.0.0.1:9000","Address":"169.254.169.254:80"}`))
	if err == nil || !strings.Contains(err.Error(), `Address: unknown field (field names are case-sensitive: "address")`) {
		t.Fatalf("DecodeValue: %v", err)
	}
}

// FuzzDecode feeds arbitrary keys and values to the decoder the reader uses:
// it must never panic, and whatever it accepts must be valid and survive an
// encode/decode round trip unchanged. The seed corpus is in testdata/fuzz.
func FuzzDecode(f *testing.F) {
	f.Add("/workersd/v1/api/web-1/3", []byte(`{"address":"10.0.0.5:40211","scheme":"http","metrics_path":"/metrics","pid":4242,"started_at":"2026-11-21T10:00:00Z","labels":{"version":"1.4.2"}}`))
	f.Add("/workersd/v1/a/h/0", []byte(`{"address":"[::1]:80"}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		reg, err := registrar.Decode(registrar.DefaultPrefix, []byte(key), value)
		if err != nil {
			var fe *registrar.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error is not a FieldError: %v", err)
			}
			return
		}
		if reg.Key.String() != key {
			t.Fatalf("key %q decoded to %q", key, reg.Key.String())
		}
		if err := reg.Value.Validate(); err != nil {
			t.Fatalf("accepted an invalid value: %v", err)
		}
		for name, v := range reg.Labels {
			if strings.HasPrefix(name, "__") || !utf8.ValidString(v) {
				t.Fatalf("accepted label %q=%q", name, v)
			}
		}
		b, err := reg.Value.Encode()
		if err != nil {
			t.Fatalf("accepted value does not encode: %v", err)
		}
		again, err := registrar.DecodeValue(b)
		if err != nil {
			t.Fatalf("re-encoded value does not decode: %v", err)
		}
		b2, _ := json.Marshal(again)
		if !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed the value: %s != %s", b, b2)
		}
	})
}

// Issue 12, finding 7: 32 labels of 1 KiB passed the writer's checks but
// encoded to 33 KB, which the reader skips: the target never appeared.
// Every writer now refuses what the reader would skip, naming the field.
func TestWriterRefusesWhatTheReaderWouldSkip(t *testing.T) {
	labels := map[string]string{}
	for i := range registrar.MaxLabels {
		labels[fmt.Sprintf("l%02d", i)] = strings.Repeat("x", registrar.MaxLabelValueLen)
	}
	cases := []struct {
		name  string
		v     registrar.Value
		field string
	}{
		{"labels too big together", registrar.Value{Address: "10.0.0.5:1", Labels: labels}, "labels"},
		{"label name too long", registrar.Value{Address: "10.0.0.5:1", Labels: map[string]string{strings.Repeat("n", registrar.MaxLabelNameLen+1): "v"}}, "labels." + strings.Repeat("n", registrar.MaxLabelNameLen+1)},
		{"metrics path with a query", registrar.Value{Address: "10.0.0.5:1", MetricsPath: "/metrics?x=1"}, "metrics_path"},
		{"metrics path with ..", registrar.Value{Address: "10.0.0.5:1", MetricsPath: "/a/../v3/kv/range"}, "metrics_path"},
		{"metrics path starting with //", registrar.Value{Address: "10.0.0.5:1", MetricsPath: "//evil.example/m"}, "metrics_path"},
		{"metrics path with a control character", registrar.Value{Address: "10.0.0.5:1", MetricsPath: "/m\x00"}, "metrics_path"},
	}
	for _, c := range cases {
		_, err := c.v.Encode()
		var fe *registrar.FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%s: Encode error %v, want a FieldError on %q", c.name, err, c.field)
		}
	}
	// Just within the limits: accepted, and the reader accepts it too.
	small := map[string]string{}
	for i := range 12 {
		small[fmt.Sprintf("l%02d", i)] = strings.Repeat("x", registrar.MaxLabelValueLen)
	}
	b, err := registrar.Value{Address: "10.0.0.5:1", Labels: small, MetricsPath: "/a/b.c/metrics"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registrar.DecodeValue(b); err != nil {
		t.Fatalf("the reader refuses what the writer wrote: %v", err)
	}
}

// BenchmarkDecode is what sdwriter pays for every registration it reads:
// one key and a typical value (address, path of its own, pid, start, a
// label), parsed and validated.
func BenchmarkDecode(b *testing.B) {
	v := registrar.Value{Address: "10.0.0.5:40211", MetricsPath: registrar.OwnMetricsPath(4242), PID: 4242,
		StartedAt: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC), Labels: map[string]string{"version": "1.4.2"}}
	val, err := v.Encode()
	if err != nil {
		b.Fatal(err)
	}
	key := []byte("/workersd/v1/api/web-1/3")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := registrar.Decode(registrar.DefaultPrefix, key, val); err != nil {
			b.Fatal(err)
		}
	}
}
