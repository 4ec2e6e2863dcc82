// Package strictjson is the one home of how workersd reads JSON that others
// wrote: the agent's API requests and the registrations sdwriter reads from
// etcd. encoding/json matches object keys to fields case-insensitively
// (Unicode folding included) and lets the last of duplicate keys win, so
// {"address":"127.0.0.1:80","Address":"169.254.169.254:80"} decodes to the
// second address while a reviewer, a log line or another reader sees the
// first. Unmarshal refuses such documents instead, naming the field.
//
// encoding/json/v2 (which has these rules) needs GOEXPERIMENT=jsonv2 in Go
// 1.26; this package walks the document once before encoding/json decodes
// it, which is cheap next to the decode itself (BenchmarkUnmarshal).
package strictjson

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// Error is why a document was refused. Field is the path of the member at
// fault, as written in the document ("labels.version", "workers[2].pid"),
// or empty when the document as a whole is (invalid JSON, data after it).
// Unknown says that the member is no field of its struct at all (a key in
// another case included): Field is then what the document says, not a
// field of the type.
type Error struct {
	Field   string
	Msg     string
	Unknown bool

	// The way to the member, innermost first, gathered as the walk
	// unwinds so that a valid document costs no path; nil for errors of
	// the whole document.
	steps []step
}

func (e *Error) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

// MaxDepth bounds the nesting of a document, as encoding/json does.
const MaxDepth = 10000

// Unmarshal decodes data, one JSON value with nothing but white space
// around it, into v (a non-nil pointer), as encoding/json.Unmarshal does,
// but refuses, with an *Error naming the field:
//
//   - an object key that is not exactly the json name of a field of the
//     struct it decodes into (no case-insensitive match), or that is no
//     field of it at all (unknown fields);
//   - a key that appears twice in one object, at any depth: struct fields,
//     map keys (labels) and objects inside values of any type alike,
//     compared after unescaping as encoding/json compares them;
//   - invalid JSON, and anything after the value.
//
// A value of the wrong type for its field is an *Error naming it too.
func Unmarshal(data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("strictjson: Unmarshal needs a non-nil pointer, not %T", v)
	}
	w := walker{data: data}
	w.space()
	if w.i == len(data) {
		return &Error{Msg: "empty document: a JSON value is required"}
	}
	if err := w.value(schemaOf(rv.Type().Elem()), 0); err != nil {
		if e, ok := err.(*Error); ok && e.steps != nil {
			e.Field = fieldOf(e.steps)
			e.steps = nil
		}
		return err
	}
	w.space()
	if w.i != len(data) {
		return &Error{Msg: fmt.Sprintf("data after the JSON value (at byte %d)", w.i)}
	}
	if err := json.Unmarshal(data, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return &Error{Field: te.Field, Msg: fmt.Sprintf("a JSON %s cannot be a %s", te.Value, te.Type)}
		}
		return &Error{Msg: err.Error()}
	}
	return nil
}

// schema is what a Go type accepts as object keys.
type schema struct {
	fields map[string]*schema // a struct's members by json name; nil: not a struct
	names  []string           // the same names, for messages
	elem   *schema            // the schema of a map's values or a slice's elements; nil: any
}

var (
	schemas   sync.Map // reflect.Type -> *schema
	anySchema = &schema{}
)

var (
	unmarshalerType     = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func schemaOf(t reflect.Type) *schema {
	if s, ok := schemas.Load(t); ok {
		return s.(*schema)
	}
	s := build(t, map[reflect.Type]*schema{})
	schemas.Store(t, s)
	return s
}

// build derives t's schema; building holds the schemas under construction,
// for recursive types.
func build(t reflect.Type, building map[reflect.Type]*schema) *schema {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if s, ok := building[t]; ok {
		return s
	}
	// A type that decodes itself takes any value; its objects are still
	// checked for duplicate keys.
	if t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType) ||
		t.Implements(textUnmarshalerType) || reflect.PointerTo(t).Implements(textUnmarshalerType) {
		return anySchema
	}
	switch t.Kind() {
	case reflect.Struct:
		s := &schema{fields: map[string]*schema{}}
		building[t] = s
		addFields(s, t, building, map[string]int{}, 0)
		for name := range s.fields {
			s.names = append(s.names, name)
		}
		return s
	case reflect.Map, reflect.Slice, reflect.Array:
		if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 {
			return anySchema // []byte is a base64 string
		}
		s := &schema{}
		building[t] = s
		s.elem = build(t.Elem(), building)
		return s
	}
	return anySchema
}

// addFields adds the json members of struct t, embedded structs' promoted
// ones included; a shallower member wins over a deeper one of the same
// name, as in encoding/json.
func addFields(s *schema, t reflect.Type, building map[reflect.Type]*schema, depthOf map[string]int, depth int) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" && ft.Kind() == reflect.Struct {
			addFields(s, ft, building, depthOf, depth+1)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if d, ok := depthOf[name]; ok && d <= depth {
			continue
		}
		depthOf[name] = depth
		s.fields[name] = build(f.Type, building)
	}
}

// step is one step of the way from the document's root to a member: a key,
// or an array index when key is nil.
type step struct {
	key   []byte
	index int
}

// fieldOf renders steps, innermost first, as "labels.version" or "list[1].name".
func fieldOf(steps []step) string {
	var b strings.Builder
	for i := len(steps) - 1; i >= 0; i-- {
		st := steps[i]
		switch {
		case st.key == nil:
			b.WriteString("[" + strconv.Itoa(st.index) + "]")
		case b.Len() > 0:
			b.WriteString(".")
			fallthrough
		default:
			b.Write(st.key)
		}
	}
	return b.String()
}

// memberErr is an error of the member at st (its parents add theirs).
func memberErr(st step, msg string, unknown bool) error {
	return &Error{Msg: msg, Unknown: unknown, steps: []step{st}}
}

// within adds st, the member err happened in, to err's way.
func within(err error, st step) error {
	if e, ok := err.(*Error); ok && e.steps != nil {
		e.steps = append(e.steps, st)
	}
	return err
}

// walker checks a document's syntax and its keys against a schema.
type walker struct {
	data []byte
	i    int
}

func (w *walker) space() {
	for w.i < len(w.data) {
		switch w.data[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return
		}
	}
}

func (w *walker) syntax(what string) error {
	if w.i >= len(w.data) {
		return &Error{Msg: "invalid JSON: unexpected end, " + what}
	}
	return &Error{Msg: fmt.Sprintf("invalid JSON at byte %d: %s", w.i, what)}
}

func (w *walker) value(s *schema, depth int) error {
	if depth > MaxDepth {
		// The member's own step is added by its parent.
		return &Error{Msg: fmt.Sprintf("nested deeper than %d", MaxDepth), steps: make([]step, 0, depth)}
	}
	if w.i >= len(w.data) {
		return w.syntax("a value is expected")
	}
	switch c := w.data[w.i]; {
	case c == '{':
		return w.object(s, depth)
	case c == '[':
		return w.array(s, depth)
	case c == '"':
		_, _, err := w.str()
		return err
	case c == '-' || (c >= '0' && c <= '9'):
		return w.number()
	case c == 't':
		return w.literal("true")
	case c == 'f':
		return w.literal("false")
	case c == 'n':
		return w.literal("null")
	}
	return w.syntax("a value is expected")
}

func (w *walker) object(s *schema, depth int) error {
	w.i++ // '{'
	var small [16][]byte
	seen := small[:0]
	var many map[string]struct{}
	w.space()
	if w.i < len(w.data) && w.data[w.i] == '}' {
		w.i++
		return nil
	}
	for {
		w.space()
		if w.i >= len(w.data) || w.data[w.i] != '"' {
			return w.syntax("an object key is expected")
		}
		raw, escaped, err := w.str()
		if err != nil {
			return err
		}
		key := raw[1 : len(raw)-1]
		if escaped {
			// Unescaped as encoding/json does (invalid UTF-8 becomes
			// U+FFFD), so that keys equal to it are equal here.
			var k string
			if err := json.Unmarshal(raw, &k); err != nil {
				return &Error{Msg: fmt.Sprintf("invalid key %s: %v", raw, err)}
			}
			key = []byte(k)
		}
		member := step{key: key}
		if many == nil {
			for _, k := range seen {
				if bytes.Equal(k, key) {
					return memberErr(member, "duplicate key: a key may appear once in an object", false)
				}
			}
			if seen = append(seen, key); len(seen) > 32 {
				many = make(map[string]struct{}, 2*len(seen))
				for _, k := range seen {
					many[string(k)] = struct{}{}
				}
			}
		} else {
			if _, dup := many[string(key)]; dup {
				return memberErr(member, "duplicate key: a key may appear once in an object", false)
			}
			many[string(key)] = struct{}{}
		}
		sub := anySchema
		switch {
		case s.fields != nil:
			var ok bool
			if sub, ok = s.fields[string(key)]; !ok {
				return memberErr(member, unknown(s, key), true)
			}
		case s.elem != nil:
			sub = s.elem
		}
		w.space()
		if w.i >= len(w.data) || w.data[w.i] != ':' {
			return w.syntax("':' is expected after an object key")
		}
		w.i++
		w.space()
		if err := w.value(sub, depth+1); err != nil {
			return within(err, member)
		}
		w.space()
		if w.i >= len(w.data) {
			return w.syntax("',' or '}' is expected")
		}
		switch w.data[w.i] {
		case ',':
			w.i++
		case '}':
			w.i++
			return nil
		default:
			return w.syntax("',' or '}' is expected")
		}
	}
}

// unknown says why key is no member of s, naming the field meant when the
// key differs from one only in case.
func unknown(s *schema, key []byte) string {
	for _, name := range s.names {
		if strings.EqualFold(name, string(key)) {
			return fmt.Sprintf("unknown field (field names are case-sensitive: %q)", name)
		}
	}
	return "unknown field"
}

func (w *walker) array(s *schema, depth int) error {
	w.i++ // '['
	elem := anySchema
	if s.fields == nil && s.elem != nil {
		elem = s.elem
	}
	w.space()
	if w.i < len(w.data) && w.data[w.i] == ']' {
		w.i++
		return nil
	}
	for n := 0; ; n++ {
		w.space()
		if err := w.value(elem, depth+1); err != nil {
			return within(err, step{index: n})
		}
		w.space()
		if w.i >= len(w.data) {
			return w.syntax("',' or ']' is expected")
		}
		switch w.data[w.i] {
		case ',':
			w.i++
		case ']':
			w.i++
			return nil
		default:
			return w.syntax("',' or ']' is expected")
		}
	}
}

// str reads a string; raw includes its quotes, escaped says whether it
// needs unescaping (an escape or a byte outside ASCII) to be compared.
func (w *walker) str() (raw []byte, escaped bool, err error) {
	start := w.i
	w.i++ // '"'
	for w.i < len(w.data) {
		c := w.data[w.i]
		switch {
		case c == '"':
			w.i++
			return w.data[start:w.i], escaped, nil
		case c == '\\':
			escaped = true
			if w.i+1 >= len(w.data) {
				w.i++
				return nil, false, w.syntax("an escape is expected")
			}
			switch w.data[w.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				w.i += 2
			case 'u':
				if w.i+6 > len(w.data) {
					w.i = len(w.data)
					return nil, false, w.syntax("four hex digits are expected")
				}
				for _, h := range w.data[w.i+2 : w.i+6] {
					if !isHex(h) {
						return nil, false, w.syntax("four hex digits are expected after \\u")
					}
				}
				w.i += 6
			default:
				return nil, false, w.syntax("invalid escape in a string")
			}
		case c < 0x20:
			return nil, false, w.syntax("control character in a string")
		case c >= utf8.RuneSelf:
			escaped = true
			w.i++
		default:
			w.i++
		}
	}
	return nil, false, w.syntax("unterminated string")
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func (w *walker) number() error {
	digits := func() int {
		n := 0
		for w.i < len(w.data) && w.data[w.i] >= '0' && w.data[w.i] <= '9' {
			w.i++
			n++
		}
		return n
	}
	if w.data[w.i] == '-' {
		w.i++
	}
	if w.i < len(w.data) && w.data[w.i] == '0' {
		w.i++
	} else if digits() == 0 {
		return w.syntax("a digit is expected")
	}
	if w.i < len(w.data) && w.data[w.i] == '.' {
		w.i++
		if digits() == 0 {
			return w.syntax("a digit is expected after '.'")
		}
	}
	if w.i < len(w.data) && (w.data[w.i] == 'e' || w.data[w.i] == 'E') {
		w.i++
		if w.i < len(w.data) && (w.data[w.i] == '+' || w.data[w.i] == '-') {
			w.i++
		}
		if digits() == 0 {
			return w.syntax("a digit is expected in the exponent")
		}
	}
	return nil
}

func (w *walker) literal(lit string) error {
	if !bytes.HasPrefix(w.data[w.i:], []byte(lit)) {
		return w.syntax("a value is expected")
	}
	w.i += len(lit)
	return nil
}
