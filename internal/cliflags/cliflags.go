// Package cliflags holds the command-line flags that every workersd daemon
// shares (etcd TLS and auth, logging), so sdwriter and the host agent spell
// and behave them alike, in Prometheus' dotted style.
package cliflags

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/common/config"
)

// EtcdAuth receives --etcd.cacert, --etcd.cert, --etcd.key, --etcd.username
// and --etcd.password-file.
type EtcdAuth struct {
	TLS          *config.TLSConfig
	Username     *string
	PasswordFile *string
}

// AddEtcdAuth defines the etcd TLS and authentication flags on app.
func AddEtcdAuth(app *kingpin.Application, a EtcdAuth) {
	app.Flag("etcd.cacert", "CA certificate file to verify etcd's TLS certificate.").StringVar(&a.TLS.CAFile)
	app.Flag("etcd.cert", "Client certificate file for etcd TLS.").StringVar(&a.TLS.CertFile)
	app.Flag("etcd.key", "Client key file for etcd TLS.").StringVar(&a.TLS.KeyFile)
	app.Flag("etcd.username", "etcd user name.").StringVar(a.Username)
	app.Flag("etcd.password-file", "File holding the etcd user's password.").StringVar(a.PasswordFile)
}

// Log receives --log.level and --log.format.
type Log struct {
	Level, Format string
}

// AddLog defines the logging flags on app.
func AddLog(app *kingpin.Application) *Log {
	l := &Log{}
	app.Flag("log.level", "Only log messages with the given severity or above. One of: [trace, debug, info, warn, error]").
		Default("info").EnumVar(&l.Level, "trace", "debug", "info", "warn", "error")
	app.Flag("log.format", "Output format of log messages. One of: [text, json]").Default("text").EnumVar(&l.Format, "text", "json")
	return l
}

// Logger returns the hclog logger the flags describe, writing to w.
func (l *Log) Logger(name string, w io.Writer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      hclog.LevelFromString(l.Level),
		JSONFormat: l.Format == "json",
		Output:     w,
	})
}

// ZeroIsOff turns the value of a duration flag whose 0s turns a feature off
// (workersd-agent's and the demo worker's --slot-hold, sdwriter's
// --check.slot-hold and --check.final-scrape-timeout) into the Config
// field it sets, where 0 means the default (Go's zero value is "not set")
// and a negative value off: 0 gives -1, a positive value itself. On the
// command line 0s reads as "none", so that is what it means there; a
// negative flag value is an error, for the caller to prefix with the
// flag's name.
func ZeroIsOff(d time.Duration) (time.Duration, error) {
	switch {
	case d < 0:
		return 0, fmt.Errorf("%s is negative", d)
	case d == 0:
		return -1, nil
	}
	return d, nil
}

// Endpoints splits the value of a comma-separated --etcd.endpoints into
// its endpoints, spaces around each trimmed and empty ones dropped (a
// trailing comma, "a, b"). It returns nil for an empty value: what that
// means (an embedded etcd, the default, an error) is the caller's.
func Endpoints(s string) []string {
	var out []string
	for e := range strings.SplitSeq(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}
