// Package cliflags holds the command-line flags that every workersd daemon
// shares (etcd TLS and auth, logging), so sdwriter and the host agent spell
// and behave them alike, in Prometheus' dotted style.
package cliflags

import (
	"io"

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
