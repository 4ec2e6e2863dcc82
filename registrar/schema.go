package registrar

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/common/model"

	"github.com/workersd/workersd/internal/strictjson"
)

// Key schema v1. See docs/KEYS.md for the same rules written for people who
// register from another language.
const (
	// DefaultPrefix is where registrations live unless configured otherwise.
	DefaultPrefix = "/workersd/v1/"
	// DefaultScheme and DefaultMetricsPath are what an empty field means.
	DefaultScheme      = "http"
	DefaultMetricsPath = "/metrics"

	// MaxValueSize bounds one encoded value: a registration is a few hundred
	// bytes, so anything near etcd's 1.5 MiB request limit is garbage.
	MaxValueSize = 16 << 10
	// MaxNameLen bounds job and host names.
	MaxNameLen = 128
	// MaxLabels, MaxLabelNameLen and MaxLabelValueLen bound the user labels
	// of one registration; all of it must also encode within MaxValueSize.
	MaxLabels        = 32
	MaxLabelNameLen  = 128
	MaxLabelValueLen = 1024
	// MaxSlot is the highest slot number; far above any real worker count, it
	// keeps keys short and stops a runaway claimer.
	MaxSlot = 1<<20 - 1
)

// reservedLabels are set by the reader from the key; a user label with one of
// these names would be ambiguous, so it is refused.
var reservedLabels = map[string]bool{"job": true, "instance": true, "host": true, "worker": true}

// FieldError says which field of a registration is invalid and why. Every
// validation error of this package is one, so callers (and tests) can tell
// which input to fix.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Key identifies one registration: <prefix><job>/<host>/<slot>.
type Key struct {
	Prefix string
	Job    string
	Host   string
	Slot   int
}

// String renders the etcd key.
func (k Key) String() string {
	return k.SlotPrefix() + strconv.Itoa(k.Slot)
}

// SlotPrefix is the key prefix shared by every slot of (job, host).
func (k Key) SlotPrefix() string {
	return k.Prefix + k.Job + "/" + k.Host + "/"
}

// HoldKey is the key that keeps the slot taken for a while after the
// registration ends (see Config.SlotHold): <prefix without its last '/'>.hold/
// <job>/<host>/<slot>. It lives beside the prefix, not under it, so readers
// of registrations never see it.
func (k Key) HoldKey() string {
	return k.HoldSlotPrefix() + strconv.Itoa(k.Slot)
}

// HoldSlotPrefix is the key prefix shared by the holds of every slot of
// (job, host).
func (k Key) HoldSlotPrefix() string {
	return HoldPrefix(k.Prefix) + k.Job + "/" + k.Host + "/"
}

// HoldPrefix is where the slot holds of registrations under prefix live.
func HoldPrefix(prefix string) string { return strings.TrimSuffix(prefix, "/") + ".hold/" }

// ParseHoldKey is the inverse of HoldKey: the Key of the registration
// whose slot a hold key under prefix (the registrations' prefix) holds.
func ParseHoldKey(prefix, key string) (Key, error) {
	k, err := ParseKey(HoldPrefix(prefix), key)
	if err != nil {
		return Key{}, err
	}
	k.Prefix = prefix
	return k, nil
}

// Instance is the value of the instance label: stable across restarts.
func (k Key) Instance() string { return k.Host + "/" + strconv.Itoa(k.Slot) }

// ValidatePrefix checks a key prefix: absolute and ending in '/'.
func ValidatePrefix(prefix string) error {
	if !strings.HasPrefix(prefix, "/") || !strings.HasSuffix(prefix, "/") {
		return fieldErr("prefix", "%q must start and end with '/'", prefix)
	}
	if !utf8.ValidString(prefix) {
		return fieldErr("prefix", "not valid UTF-8")
	}
	return nil
}

// ValidateName checks a job or host name; field names it in the error.
func ValidateName(field, s string) error {
	switch {
	case s == "":
		return fieldErr(field, "must not be empty")
	case len(s) > MaxNameLen:
		return fieldErr(field, "longer than %d bytes", MaxNameLen)
	case !utf8.ValidString(s):
		return fieldErr(field, "not valid UTF-8")
	case s == "." || s == "..":
		return fieldErr(field, "%q is not a name", s)
	}
	for _, r := range s {
		if r == '/' {
			return fieldErr(field, "%q must not contain '/'", s)
		}
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fieldErr(field, "%q must not contain spaces or control characters", s)
		}
	}
	return nil
}

// ParseKey splits an etcd key under prefix into its parts and validates them.
func ParseKey(prefix, key string) (Key, error) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return Key{}, fieldErr("key", "%q is not under prefix %q", key, prefix)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return Key{}, fieldErr("key", "%q is not <job>/<host>/<slot>", rest)
	}
	k := Key{Prefix: prefix, Job: parts[0], Host: parts[1]}
	if err := ValidateName("job", k.Job); err != nil {
		return Key{}, err
	}
	if err := ValidateName("host", k.Host); err != nil {
		return Key{}, err
	}
	slot, err := parseSlot(parts[2])
	if err != nil {
		return Key{}, err
	}
	k.Slot = slot
	return k, nil
}

// parseSlot accepts only the canonical decimal form, so one slot has one key.
func parseSlot(s string) (int, error) {
	if s == "" || len(s) > 7 || (len(s) > 1 && s[0] == '0') {
		return 0, fieldErr("slot", "%q is not a canonical slot number", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > MaxSlot {
		return 0, fieldErr("slot", "%q is not a slot number in [0, %d]", s, MaxSlot)
	}
	return n, nil
}

// Value is what a registration stores: where and how to scrape the worker.
type Value struct {
	Address     string            `json:"address"`
	Scheme      string            `json:"scheme,omitempty"`
	MetricsPath string            `json:"metrics_path,omitempty"`
	PID         int               `json:"pid,omitempty"`
	StartedAt   time.Time         `json:"started_at,omitzero"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// Validate checks every field and names the first one that is wrong.
func (v Value) Validate() error {
	if err := v.validateFields(); err != nil {
		return err
	}
	// What a reader would skip is refused here, by every writer.
	if b, err := json.Marshal(v); err == nil && len(b) > MaxValueSize {
		return fieldErr("labels", "the registration encodes to %d bytes, at most %d allowed", len(b), MaxValueSize)
	}
	return nil
}

// validateFields is Validate without the size of the encoding, which a
// reader has already checked on the bytes it read.
func (v Value) validateFields() error {
	if err := ValidateAddress(v.Address); err != nil {
		return err
	}
	switch v.Scheme {
	case "", "http", "https":
	default:
		return fieldErr("scheme", "%q is neither http nor https", v.Scheme)
	}
	if err := ValidateMetricsPath(v.MetricsPath); err != nil {
		return err
	}
	if v.PID < 0 {
		return fieldErr("pid", "%d is negative", v.PID)
	}
	return ValidateLabels(v.Labels)
}

// OwnMetricsPath is a metrics path that only this process serves:
// "/metrics/<pid>-<16 random hex digits>". Workers register it instead of
// "/metrics" because their port is ephemeral: after a worker exits,
// Prometheus keeps scraping its address until discovery catches up (up to
// its 5 s throttle and a refresh), and if another process, a new worker of
// the same job included, has been given the freed port meanwhile, a scrape
// of "/metrics" would record that process' counters under the old
// worker's instance and count them twice. With a path of its own, the
// stale scrape gets a 404 and records nothing.
func OwnMetricsPath(pid int) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on supported platforms; the pid and
		// the time still make a reuse unlikely.
		binary.BigEndian.PutUint64(b[:], uint64(time.Now().UnixNano()))
	}
	return fmt.Sprintf("%s/%d-%s", DefaultMetricsPath, pid, hex.EncodeToString(b[:]))
}

// ValidateMetricsPath checks a metrics path: empty (the default) or an
// absolute URL path and nothing else: no query, fragment, spaces, control
// characters, "//" at its start or ".." segments.
func ValidateMetricsPath(p string) error {
	if p == "" {
		return nil
	}
	bad := !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || len(p) > 1024 || !utf8.ValidString(p) ||
		strings.ContainsFunc(p, func(r rune) bool {
			return r == '?' || r == '#' || r == '\\' || unicode.IsSpace(r) || !unicode.IsPrint(r)
		})
	for seg := range strings.SplitSeq(p, "/") {
		bad = bad || seg == ".."
	}
	if bad {
		return fieldErr("metrics_path", "%q must be an absolute URL path (no query, fragment, spaces, '..' or leading '//')", p)
	}
	return nil
}

// ValidateAddress checks host:port with a numeric port in 1..65535.
func ValidateAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fieldErr("address", "%q is not host:port: %v", addr, err)
	}
	if host == "" {
		return fieldErr("address", "%q has no host: Prometheus could not reach it", addr)
	}
	if strings.ContainsFunc(host, func(r rune) bool { return r == '/' || unicode.IsSpace(r) || !unicode.IsPrint(r) }) {
		return fieldErr("address", "%q has an invalid host", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return fieldErr("address", "port %q is not a number", port)
	}
	if n < 1 || n > 65535 {
		return fieldErr("address", "port %d is out of range 1-65535", n)
	}
	return nil
}

// ValidateLabels checks user labels: legacy Prometheus label names, not
// reserved (job, instance, host, worker) and not starting with "__", values
// valid UTF-8 and bounded.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fieldErr("labels", "%d labels, at most %d allowed", len(labels), MaxLabels)
	}
	for _, name := range sortedKeys(labels) {
		field := "labels." + name
		switch {
		case len(name) > MaxLabelNameLen:
			return fieldErr(field, "name longer than %d bytes", MaxLabelNameLen)
		case !model.LegacyValidation.IsValidLabelName(name):
			return fieldErr(field, "%q is not a valid label name", name)
		case strings.HasPrefix(name, "__"):
			return fieldErr(field, "names starting with __ are reserved for Prometheus")
		case reservedLabels[name]:
			return fieldErr(field, "%q is set by workersd and cannot be overridden", name)
		}
		val := labels[name]
		if !utf8.ValidString(val) {
			return fieldErr(field, "value is not valid UTF-8")
		}
		if len(val) > MaxLabelValueLen {
			return fieldErr(field, "value longer than %d bytes", MaxLabelValueLen)
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Encode validates v and renders it as the JSON stored in etcd.
func (v Value) Encode() ([]byte, error) {
	if err := v.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode value: %w", err)
	}
	return b, nil
}

// DecodeValue parses and validates a stored value. It reads JSON strictly
// (internal/strictjson): field names exactly as Encode writes them, no key
// twice at any level (labels included), no unknown field (v1 is fixed, and a
// later schema lives under another prefix), nothing after the object. Go's
// encoding/json alone matches names case-insensitively and lets the last
// duplicate win, so {"address":"127.0.0.1:80","Address":"169.254.169.254:80"}
// became a target of the second address while every other reader saw the
// first. The error is on the field at fault, or on "value" for a key that
// is no field (its message names the key).
func DecodeValue(b []byte) (Value, error) {
	if len(b) > MaxValueSize {
		return Value{}, fieldErr("value", "%d bytes, at most %d allowed", len(b), MaxValueSize)
	}
	if !utf8.Valid(b) {
		return Value{}, fieldErr("value", "not valid UTF-8")
	}
	var v Value
	if err := strictjson.Unmarshal(b, &v); err != nil {
		var se *strictjson.Error
		if errors.As(err, &se) && se.Field != "" && !se.Unknown {
			return Value{}, fieldErr(se.Field, "%s", se.Msg)
		}
		return Value{}, fieldErr("value", "invalid JSON: %v", err)
	}
	if err := v.validateFields(); err != nil {
		return Value{}, err
	}
	return v, nil
}

// Registration is one decoded, validated entry under the prefix.
type Registration struct {
	Key
	Value
}

// Decode parses one key/value pair read from etcd. Both halves are validated
// with the same rules the writer applies.
func Decode(prefix string, key, value []byte) (Registration, error) {
	k, err := ParseKey(prefix, string(key))
	if err != nil {
		return Registration{}, err
	}
	v, err := DecodeValue(value)
	if err != nil {
		return Registration{}, fmt.Errorf("%s: %w", k, err)
	}
	return Registration{Key: k, Value: v}, nil
}

// SchemeOrDefault and MetricsPathOrDefault resolve empty fields.
func (v Value) SchemeOrDefault() string {
	if v.Scheme == "" {
		return DefaultScheme
	}
	return v.Scheme
}

// MetricsPathOrDefault returns the metrics path, "/metrics" when unset.
func (v Value) MetricsPathOrDefault() string {
	if v.MetricsPath == "" {
		return DefaultMetricsPath
	}
	return v.MetricsPath
}
