//go:build linux

package agent

import (
	"fmt"
	"strings"
	"testing"
)

// Issue 21: encoding/json matched "Port" to port and let the last of two
// keys win, so a request could say one thing to whoever read it and
// register another. Every such request is a 400 naming the field, and
// changes nothing.
func TestRegisterRequestsAreStrictJSON(t *testing.T) {
	h := newHarness(t, nil, nil)
	pid := child(t).Process.Pid
	for _, tc := range []struct {
		name, body, field, msg string
	}{
		{"duplicate port", `{"job":"api","pid":%d,"port":9000,"port":9001}`, "port", "duplicate key"},
		{"duplicate address", `{"job":"api","pid":%d,"address":"127.0.0.1:9000","address":"127.0.0.2:9000"}`, "address", "duplicate key"},
		{"duplicate after unescaping", `{"job":"api","pid":%d,"port":9000,"\u0070ort":9001}`, "port", "duplicate key"},
		{"duplicate label", `{"job":"api","pid":%d,"port":9000,"labels":{"env":"prod","env":"dev"}}`, "labels.env", "duplicate key"},
		{"field in another case", `{"job":"api","pid":%d,"port":9000,"Port":9001}`, "", `Port: unknown field (field names are case-sensitive: "port")`},
		{"only another case", `{"job":"api","pid":%d,"PORT":9001}`, "", `PORT: unknown field`},
		{"Unicode case folding", `{"job":"api","pid":%d,"port":9000,"metrics_path":"/m","metrics_paſh":"/x"}`, "", "metrics_paſh: unknown field"},
		{"wrong type", `{"job":"api","pid":"%d","port":9000}`, "pid", "string"},
		{"two objects", `{"job":"api","pid":%d,"port":9000}{"job":"x"}`, "", "data after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := h.do("POST", "/v1/workers", []byte(fmt.Sprintf(tc.body, pid)))
			if code != 400 {
				t.Fatalf("status %d, want 400: %v", code, out)
			}
			if f, _ := out["field"].(string); f != tc.field {
				t.Errorf("field %q, want %q", f, tc.field)
			}
			if msg, _ := out["error"].(string); !strings.Contains(msg, tc.msg) {
				t.Errorf("error %q lacks %q", msg, tc.msg)
			}
		})
	}
	if regs := h.keys(); len(regs) != 0 {
		t.Fatalf("refused requests registered: %v", regs)
	}
	// The same request written plainly registers.
	if code, out := h.do("POST", "/v1/workers", []byte(fmt.Sprintf(`{"job":"api","pid":%d,"port":9001,"labels":{"env":"dev"}}`, pid))); code != 201 {
		t.Fatalf("plain request: %d %v", code, out)
	}
}
