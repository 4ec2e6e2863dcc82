// Package hclogslog gives Prometheus libraries that want a *slog.Logger
// (exporter-toolkit, discovery) one that writes through a hashicorp/go-hclog
// logger, so a process has one log stream in one format.
package hclogslog

import (
	"context"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// New returns a *slog.Logger that writes through l.
func New(l hclog.Logger) *slog.Logger { return slog.New(&slogHandler{l: l}) }

// slogHandler writes slog records through an hclog logger.
type slogHandler struct {
	l      hclog.Logger
	attrs  []any
	prefix string // group prefix for keys, "" or "group."
}

func hclogLevel(lv slog.Level) hclog.Level {
	switch {
	case lv >= slog.LevelError:
		return hclog.Error
	case lv >= slog.LevelWarn:
		return hclog.Warn
	case lv >= slog.LevelInfo:
		return hclog.Info
	default:
		return hclog.Debug
	}
}

func (h *slogHandler) Enabled(_ context.Context, lv slog.Level) bool {
	level := h.l.GetLevel()
	return level != hclog.Off && hclogLevel(lv) >= level
}

func (h *slogHandler) Handle(_ context.Context, r slog.Record) error {
	args := append([]any(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		args = append(args, h.prefix+a.Key, a.Value.Resolve().Any())
		return true
	})
	h.l.Log(hclogLevel(r.Level), r.Message, args...)
	return nil
}

func (h *slogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := *h
	n.attrs = append([]any(nil), h.attrs...)
	for _, a := range attrs {
		n.attrs = append(n.attrs, h.prefix+a.Key, a.Value.Resolve().Any())
	}
	return &n
}

func (h *slogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := *h
	n.prefix = h.prefix + name + "."
	return &n
}
