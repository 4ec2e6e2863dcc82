package sdfile

import (
	"bytes"
	"slices"
	"unicode/utf8"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// Render returns groups in the JSON that Prometheus reads from file_sd files
// and http_sd endpoints. The output depends only on the groups' content and
// sources, never on their order or on map iteration: two renderers given the
// same groups produce the same bytes. Groups are sorted by source, targets by
// address and labels by name, one entry per line; a group without targets is
// left out, and no groups render as "[]". When groups share a source, the
// last one counts, as in a discoverer's update.
func Render(groups []*targetgroup.Group) []byte {
	s := NewStore()
	s.Apply(groups)
	return s.Bytes()
}

// renderGroup renders one group as file_sd entries, without the separators
// between them. Targets that carry only an address share one entry with the
// group's labels. A target with labels of its own (which file_sd cannot
// express per target) gets an entry of its own with the group's labels
// overridden by its own, the precedence Prometheus applies. jobs gets the job
// label of every target.
func renderGroup(g *targetgroup.Group) (data []byte, jobs []string) {
	var plain []string
	type special struct {
		addr   string
		labels model.LabelSet
	}
	var specials []special
	for _, t := range g.Targets {
		addr := string(t[model.AddressLabel])
		if addr == "" {
			continue // nothing Prometheus could scrape
		}
		if len(t) == 1 {
			plain = append(plain, addr)
			continue
		}
		merged := make(model.LabelSet, len(g.Labels)+len(t))
		for n, v := range g.Labels {
			merged[n] = v
		}
		for n, v := range t {
			if n != model.AddressLabel {
				merged[n] = v
			}
		}
		specials = append(specials, special{addr, merged})
	}
	slices.Sort(plain)
	plain = slices.Compact(plain)
	if len(plain) > 0 {
		data = appendEntry(data, plain, g.Labels)
		for range plain {
			jobs = append(jobs, string(g.Labels[model.JobLabel]))
		}
	}
	rendered := make([][]byte, 0, len(specials))
	for _, sp := range specials {
		rendered = append(rendered, appendEntry(nil, []string{sp.addr}, sp.labels))
		jobs = append(jobs, string(sp.labels[model.JobLabel]))
	}
	slices.SortFunc(rendered, bytes.Compare)
	rendered = slices.CompactFunc(rendered, bytes.Equal)
	for _, r := range rendered {
		if len(data) > 0 {
			data = append(data, ",\n"...)
		}
		data = append(data, r...)
	}
	return data, jobs
}

// appendEntry appends {"targets":[...],"labels":{...}} with labels sorted.
func appendEntry(b []byte, addrs []string, labels model.LabelSet) []byte {
	b = append(b, `  {"targets":[`...)
	for i, a := range addrs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, a)
	}
	b = append(b, ']')
	if len(labels) > 0 {
		names := make([]string, 0, len(labels))
		for n := range labels {
			names = append(names, string(n))
		}
		slices.Sort(names)
		b = append(b, `,"labels":{`...)
		for i, n := range names {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, n)
			b = append(b, ':')
			b = appendString(b, string(labels[model.LabelName(n)]))
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

const hex = "0123456789abcdef"

// appendString appends s as a JSON string, byte for byte as encoding/json
// does with SetEscapeHTML(false): invalid UTF-8 becomes U+FFFD, control
// characters and U+2028/U+2029 are escaped.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
