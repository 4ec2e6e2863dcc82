// Command workersd-agent registers the workers of servers that cannot embed
// Go (gunicorn, uWSGI, Puma) in etcd, one registrar per worker process, and
// removes a worker's registration the moment its process exits. Workers call
// its JSON API on a Unix socket (default /run/workersd/agent.sock); see
// docs/AGENT.md. Run one per host.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/config"
	"github.com/prometheus/common/version"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/agent"
	"github.com/workersd/workersd/internal/cliflags"
	"github.com/workersd/workersd/internal/daemonmetrics"
	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/etcdhealth"
	"github.com/workersd/workersd/internal/netaddr"
	"github.com/workersd/workersd/registrar"
)

const (
	name = "workersd-agent"
	// defaultSocket is where the agent serves its API and list asks.
	defaultSocket   = "/run/workersd/agent.sock"
	shutdownTimeout = 5 * time.Second
	// alarmInterval is how often the agent asks etcd for its alarms.
	alarmInterval = 30 * time.Second
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	var code int
	if len(os.Args) > 1 && os.Args[1] == "list" {
		code = list(ctx, os.Args[2:], os.Stdout, os.Stderr)
	} else {
		code = run(ctx, os.Args[1:], os.Stderr, nil)
	}
	stop()
	os.Exit(code)
}

type flags struct {
	endpoints      string
	prefix         string
	tls            config.TLSConfig
	username       string
	passwordFile   string
	host           string
	advertiseHost  string
	ttl            time.Duration
	slotHold       time.Duration // agent.Config.SlotHold once parsed: the flag's 0s is -1
	lease          string
	socket         string
	address        string
	allowNonLoop   bool
	tokenFile      string
	token          string
	readTimeout    time.Duration
	writeTimeout   time.Duration
	idleTimeout    time.Duration
	maxConnsCaller int
	maxConns       int
	allowAddresses []string
	allowPrefixes  []netip.Prefix
	maxPerUser     int
	stateFile      string
	webAddress     string
	disablePidfd   bool
	log            *cliflags.Log
	etcdEndpoints  []string
	etcdClientConf clientv3.Config
}

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	app := kingpin.New(name, "Registers the worker processes of any language in etcd for workersd, and removes their registrations the moment they exit. `"+name+" list` prints the workers a running agent registered.")
	app.Version(version.Print(name))
	app.HelpFlag.Short('h')
	app.UsageWriter(stderr)
	app.ErrorWriter(stderr)
	app.Flag("etcd.endpoints", "Comma-separated etcd client endpoints.").Default("127.0.0.1:2379").StringVar(&f.endpoints)
	app.Flag("etcd.prefix", "Key prefix of the registrations.").Default(registrar.DefaultPrefix).StringVar(&f.prefix)
	cliflags.AddEtcdAuth(app, cliflags.EtcdAuth{TLS: &f.tls, Username: &f.username, PasswordFile: &f.passwordFile})
	app.Flag("host", "Host name in the keys and instance labels. Default: the system's host name.").StringVar(&f.host)
	app.Flag("advertise.host", "Host (IP or name) registered for workers that give only a port. Default: the local IP used to reach the first etcd endpoint.").StringVar(&f.advertiseHost)
	app.Flag("ttl", "Lease TTL of each registration: how long registrations outlive a stopped agent.").Default(registrar.DefaultTTL.String()).DurationVar(&f.ttl)
	app.Flag("slot-hold", "How long a worker's slot stays taken after it exits, so its replacement writes new series until Prometheus has dropped the old target: at least the scrape interval plus 15s. 0s: reuse at once (totals may miss restarts).").Default(registrar.DefaultSlotHold.String()).DurationVar(&f.slotHold)
	app.Flag("lease", "per-host: one lease for all the workers' keys (and one for all slot holds), kept alive once for the host: far fewer keep-alives for etcd with many workers (docs/SCALING.md). per-worker: a lease for each worker's key. Either way a worker's exit removes its key at once, and a restart with the other setting keeps every worker on its slot.").
		Default("per-host").EnumVar(&f.lease, "per-worker", "per-host")
	app.Flag("listen.socket", "Unix socket of the API (mode 0660). Empty: none.").Default(defaultSocket).StringVar(&f.socket)
	app.Flag("listen.address", "Optional loopback TCP address of the API, e.g. 127.0.0.1:9589; needs --listen.token-file.").StringVar(&f.address)
	app.Flag("listen.token-file", "File holding the bearer token every request on --listen.address must carry (Authorization: Bearer <token>). Such a caller may act for any user.").StringVar(&f.tokenFile)
	app.Flag("listen.allow-non-loopback", "Allow --listen.address on a non-loopback address.").BoolVar(&f.allowNonLoop)
	durationFlag(app, "listen.read-timeout", "Longest time one API request, headers and body, may take to arrive; then its connection is closed.", agent.DefaultReadTimeout, &f.readTimeout)
	durationFlag(app, "listen.write-timeout", "Longest time from an API request's headers to the end of its answer, the wait for etcd included; keep it above --ttl.", agent.DefaultWriteTimeout, &f.writeTimeout)
	durationFlag(app, "listen.idle-timeout", "Longest time an API connection may wait, idle, for its next request.", agent.DefaultIdleTimeout, &f.idleTimeout)
	intFlag(app, "listen.max-connections-per-caller", "Most API connections one caller may hold open: one user on the socket (by its peer credentials), one address on TCP. More are closed at once.", agent.DefaultMaxConnsPerCaller, &f.maxConnsCaller)
	intFlag(app, "listen.max-connections", "Most API connections all callers together may hold open. More are closed at once.", agent.DefaultMaxConns, &f.maxConns)
	app.Flag("allow-address", "A network (CIDR) whose addresses workers may register besides this host's own and loopback, e.g. a NAT address; repeatable.").StringsVar(&f.allowAddresses)
	app.Flag("max-per-user", "Most live registrations one user may hold.").Default(strconv.Itoa(agent.DefaultMaxPerUser)).IntVar(&f.maxPerUser)
	app.Flag("state.file", "File that keeps the registrations across restarts of the agent. Empty: none.").Default("/var/lib/workersd/agent.json").StringVar(&f.stateFile)
	app.Flag("web.listen-address", "Address of the agent's own /metrics, /-/healthy. Empty: not served.").StringVar(&f.webAddress)
	app.Flag("watch.disable-pidfd", "Poll processes every 100ms instead of watching pidfds.").BoolVar(&f.disablePidfd)
	f.log = cliflags.AddLog(app)
	if _, err := app.Parse(args); err != nil {
		return nil, err
	}

	if err := registrar.ValidatePrefix(f.prefix); err != nil {
		return nil, fmt.Errorf("--etcd.prefix: %w", err)
	}
	if f.etcdEndpoints = cliflags.Endpoints(f.endpoints); len(f.etcdEndpoints) == 0 {
		return nil, errors.New("--etcd.endpoints: at least one endpoint is required")
	}
	if err := registrar.ValidateTTL(f.ttl); err != nil {
		return nil, fmt.Errorf("--%w", err)
	}
	var err error
	if f.slotHold, err = cliflags.ZeroIsOff(f.slotHold); err != nil {
		return nil, fmt.Errorf("--slot-hold: %w", err)
	}
	if f.socket == "" && f.address == "" {
		return nil, errors.New("--listen.socket and --listen.address are both empty: the API would be unreachable")
	}
	if f.address != "" && !f.allowNonLoop {
		if err := netaddr.CheckLoopback(f.address); err != nil {
			return nil, fmt.Errorf("--listen.address: %w (--listen.allow-non-loopback to insist)", err)
		}
	}
	if f.address != "" {
		// TCP carries no peer credentials: without a token any local user
		// (and any browser page, through a form) could drive the API.
		if f.tokenFile == "" {
			return nil, errors.New("--listen.address needs --listen.token-file: TCP callers cannot be identified otherwise")
		}
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--listen.token-file: %w", err)
		}
		if f.token = strings.TrimSpace(string(b)); len(f.token) < 16 {
			return nil, fmt.Errorf("--listen.token-file: the token in %s is shorter than 16 characters", f.tokenFile)
		}
	}
	for _, a := range f.allowAddresses {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return nil, fmt.Errorf("--allow-address: %q is not a network in CIDR form (e.g. 203.0.113.7/32): %w", a, err)
		}
		f.allowPrefixes = append(f.allowPrefixes, p.Masked())
	}
	if f.maxPerUser < 1 {
		return nil, fmt.Errorf("--max-per-user: %d is below 1", f.maxPerUser)
	}
	for _, t := range []struct {
		flag string
		d    time.Duration
	}{{"read-timeout", f.readTimeout}, {"write-timeout", f.writeTimeout}, {"idle-timeout", f.idleTimeout}} {
		if t.d <= 0 {
			return nil, fmt.Errorf("--listen.%s: %s must be above 0s: without it a caller could hold a connection for ever", t.flag, t.d)
		}
	}
	if f.writeTimeout < time.Second {
		return nil, fmt.Errorf("--listen.write-timeout: %s is below 1s: answers that wait for etcd (up to %s for a registration) would be cut off", f.writeTimeout, agent.DefaultRegisterWait)
	}
	if f.maxConns < 1 {
		return nil, fmt.Errorf("--listen.max-connections: %d is below 1", f.maxConns)
	}
	if f.maxConnsCaller < 1 {
		return nil, fmt.Errorf("--listen.max-connections-per-caller: %d is below 1", f.maxConnsCaller)
	}
	if f.maxConnsCaller > f.maxConns {
		return nil, fmt.Errorf("--listen.max-connections-per-caller: %d is above --listen.max-connections (%d): one caller could take every connection", f.maxConnsCaller, f.maxConns)
	}
	if f.host == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("--host: not set and os.Hostname failed: %w", err)
		}
		f.host = h
	}
	if err := registrar.ValidateName("host", f.host); err != nil {
		return nil, fmt.Errorf("--host: %w", err)
	}
	if f.etcdClientConf, err = etcdclient.Auth(f.tls, f.username, "", f.passwordFile); err != nil {
		return nil, fmt.Errorf("--etcd.*: %w", err)
	}
	return f, nil
}

// run is the agent until ctx is done; it returns the exit code. ready, if
// not nil, is called once the API listens (for tests).
func run(ctx context.Context, args []string, stderr io.Writer, ready func()) int {
	f, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: error: %v, try --help\n", name, err)
		return 2
	}
	if err := checkPIDNamespace(os.Getpid()); err != nil {
		fmt.Fprintf(stderr, "%s: error: %v\n", name, err)
		return 2
	}
	logger := f.log.Logger(name, stderr)
	if err := serve(ctx, f, logger, ready); err != nil {
		logger.Error("exiting", "error", err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, f *flags, logger hclog.Logger, ready func()) error {
	logger.Info("starting", "version", version.Info(), "host", f.host, "etcd", f.etcdEndpoints)
	client, err := etcdclient.New(f.etcdEndpoints, f.etcdClientConf)
	if err != nil {
		return err
	}
	defer client.Close()

	reg := daemonmetrics.NewRegistry()
	// etcd's alarms (NOSPACE above all: no worker can register) in the
	// agent's own metrics and log, where a host's operator looks. Alarms
	// only, every 30 s: one request per host, whatever the fleet's size.
	own := prometheus.WrapRegistererWithPrefix("workersd_agent_", reg)
	healthMetrics := etcdhealth.NewMetrics(own)
	agentMetrics := agent.NewMetrics(own)
	registrarMetrics := registrar.NewMetrics(prometheus.WrapRegistererWithPrefix("workersd_registrar_", reg))
	if err := errors.Join(healthMetrics.Register(), agentMetrics.Register(), registrarMetrics.Register()); err != nil {
		return err
	}
	health, err := etcdhealth.New(etcdhealth.Config{Client: client, AlarmsOnly: true, Interval: alarmInterval,
		Logger: logger.Named("etcdhealth"), Metrics: healthMetrics})
	if err != nil {
		return err
	}
	hctx, hstop := context.WithCancel(context.WithoutCancel(ctx))
	var hwg sync.WaitGroup
	hwg.Go(func() { health.Run(hctx) })
	defer func() { hstop(); hwg.Wait() }()
	if f.stateFile != "" {
		if err := os.MkdirAll(filepath.Dir(f.stateFile), 0o755); err != nil {
			return fmt.Errorf("--state.file: %w", err)
		}
	}
	a, err := agent.New(agent.Config{
		Client:           client,
		Prefix:           f.prefix,
		Host:             f.host,
		TTL:              f.ttl,
		SlotHold:         f.slotHold,
		LeasePerWorker:   f.lease == "per-worker",
		AdvertiseHost:    f.advertiseHost,
		StateFile:        f.stateFile,
		DisablePidfd:     f.disablePidfd,
		MaxPerUser:       f.maxPerUser,
		AllowAddresses:   f.allowPrefixes,
		Metrics:          agentMetrics,
		RegistrarMetrics: registrarMetrics,
		Logger:           logger.Named("agent"),
	})
	if err != nil {
		return err
	}

	// Every API connection counts against its caller's limit and the
	// total, on both listeners; the servers' timeouts end what they hold.
	limiter, err := agent.NewConnLimiter(agent.LimitConfig{
		MaxConnsPerCaller: f.maxConnsCaller,
		MaxConns:          f.maxConns,
		Metrics:           agentMetrics,
		Logger:            logger.Named("api"),
	})
	if err != nil {
		return err
	}
	warnIfFewDescriptors(logger, f.maxConns)
	// The socket identifies callers by their peer credentials, TCP by the
	// token: two servers.
	timeouts := agent.ServerConfig{ReadTimeout: f.readTimeout, WriteTimeout: f.writeTimeout, IdleTimeout: f.idleTimeout}
	api := a.NewServerWith(timeouts)
	tcpTimeouts := timeouts
	tcpTimeouts.Token = f.token
	tcpAPI := a.NewServerWith(tcpTimeouts)
	type listener struct {
		net.Listener
		srv *http.Server
	}
	var listeners []listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	if f.socket != "" {
		l, err := listenSocketFlag(f.socket)
		if err != nil {
			return err
		}
		listeners = append(listeners, listener{limiter.Listener(l), api})
	}
	if f.address != "" {
		l, err := net.Listen("tcp", f.address)
		if err != nil {
			return fmt.Errorf("--listen.address: %w", err)
		}
		listeners = append(listeners, listener{limiter.Listener(l), tcpAPI})
	}
	var web net.Listener
	if f.webAddress != "" {
		if web, err = net.Listen("tcp", f.webAddress); err != nil {
			return fmt.Errorf("--web.listen-address: %w", err)
		}
		defer web.Close()
	}

	// Restore before serving: a worker asking again must find its
	// registration, not race with its adoption.
	if err := a.Start(ctx); err != nil {
		return err
	}

	errc := make(chan error, len(listeners)+1)
	for _, l := range listeners {
		logger.Info("API listening", "address", l.Addr().String())
		go func() { errc <- l.srv.Serve(l) }()
	}
	var webSrv *http.Server
	if web != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "workersd-agent is healthy.\n") })
		webSrv = &http.Server{Handler: mux, ReadTimeout: f.readTimeout, IdleTimeout: f.idleTimeout}
		logger.Info("metrics listening", "address", web.Addr().String())
		go func() { errc <- webSrv.Serve(web) }()
	}
	if ready != nil {
		ready()
	}
	select {
	case err = <-errc:
		err = fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down; registrations stay until their leases expire or a restarted agent adopts them")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	// The API first: a DELETE in flight waits at most the agent's
	// RemoveWait, then its removal is pending and persisted. Then the
	// agent, which keeps the leases (see agent.Close): a restart within the
	// TTL is invisible to Prometheus. All within shutdownTimeout, whatever
	// etcd does.
	api.Shutdown(sctx)
	tcpAPI.Shutdown(sctx)
	if err := a.Close(sctx); err != nil {
		logger.Warn("stopping the agent took too long; registrations and pending removals are as last persisted", "error", err)
	}
	if webSrv != nil {
		webSrv.Shutdown(sctx)
	}
	if f.socket != "" {
		os.Remove(f.socket)
	}
	return err
}

// flagValue parses a flag's value, naming the flag in its error, which
// kingpin's own parsers do not ("time: invalid duration").
type flagValue[T any] struct {
	name  string
	v     *T
	parse func(string) (T, error)
	what  string
}

func (f *flagValue[T]) Set(s string) error {
	v, err := f.parse(s)
	if err != nil {
		return fmt.Errorf("--%s: %q is not %s", f.name, s, f.what)
	}
	*f.v = v
	return nil
}

func (f *flagValue[T]) String() string { return fmt.Sprint(*f.v) }

func durationFlag(app *kingpin.Application, name, help string, def time.Duration, v *time.Duration) {
	app.Flag(name, help).Default(def.String()).SetValue(&flagValue[time.Duration]{name, v, time.ParseDuration, "a duration (e.g. 10s, 1m)"})
}

func intFlag(app *kingpin.Application, name, help string, def int, v *int) {
	app.Flag(name, help).Default(strconv.Itoa(def)).SetValue(&flagValue[int]{name, v, strconv.Atoi, "a whole number"})
}

func listenSocketFlag(path string) (net.Listener, error) {
	l, err := agent.ListenSocket(path)
	if err != nil {
		return nil, fmt.Errorf("--listen.socket: %w", err)
	}
	return l, nil
}
