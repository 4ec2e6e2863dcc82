package main

import (
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/config"
	"github.com/prometheus/common/version"

	"github.com/workersd/workersd/internal/cliflags"
	"github.com/workersd/workersd/promcheck"
	"github.com/workersd/workersd/registrar"
)

// promFlags are the flags of the checks of the Prometheus servers that read
// sdwriter's output (package promcheck), the same for serve and check.
type promFlags struct {
	urls       []string
	httpConfig string
	// As given, parsed by checkers so that a bad value names its flag.
	slotHold, finalScrape string
}

func addPromFlags(app *kingpin.Application, p *promFlags) {
	app.Flag("prometheus.url", "URL of a Prometheus server that reads sdwriter's output, as its web UI is opened (with its --web.route-prefix); repeat it for each server or shard. sdwriter asks each, through its HTTP API, whether it is set up for exact totals (created-timestamp-zero-ingestion, scrape interval, the jobs reading the output, their shards, their targets) and says what to fix (docs/CHECKS.md).").
		PlaceHolder("URL").StringsVar(&p.urls)
	app.Flag("prometheus.http-config-file", "HTTP client settings for asking the --prometheus.url servers (tls_config, basic_auth, authorization, oauth2, proxy_url, ...), in the format of Prometheus' HTTP client configuration; one file for all of them. Empty: plain HTTP(S) with the system's CAs.").
		Default("").StringVar(&p.httpConfig)
	app.Flag("check.slot-hold", "How long the workers hold a freed slot (worker.Config.SlotHold, workersd-agent --slot-hold): must match theirs, since the check compares each scrape interval with it. 0s: the workers hold no slot.").
		Default(registrar.DefaultSlotHold.String()).StringVar(&p.slotHold)
	app.Flag("check.final-scrape-timeout", "How long a stopping worker waits for its final scrape (worker.Config.FinalScrapeTimeout, the clients' final_scrape_timeout or $WORKERSD_FINAL_SCRAPE_TIMEOUT): must match the workers', since the check compares each scrape interval with it. 0s: the workers wait for no final scrape.").
		Default(promcheck.DefaultFinalScrapeTimeout.String()).StringVar(&p.finalScrape)
}

// checkers returns a Checker for each --prometheus.url, none without one;
// a bad value is an error that names its flag.
func (p *promFlags) checkers() ([]*promcheck.Checker, error) {
	// promcheck's Config, as the workers': negative is none, 0 its default.
	hold, err := parseZeroIsOff(p.slotHold)
	if err != nil {
		return nil, fmt.Errorf("--check.slot-hold=%s: want a duration such as 30s, 0s when the workers hold no slot", p.slotHold)
	}
	final, err := parseZeroIsOff(p.finalScrape)
	if err != nil {
		return nil, fmt.Errorf("--check.final-scrape-timeout=%s: want a duration such as 15s, 0s when the workers wait for no final scrape", p.finalScrape)
	}
	if len(p.urls) == 0 {
		if p.httpConfig != "" {
			return nil, fmt.Errorf("--prometheus.http-config-file needs --prometheus.url")
		}
		return nil, nil
	}
	client, err := httpClient("--prometheus.http-config-file", p.httpConfig, "prometheus")
	if err != nil {
		return nil, err
	}
	var cs []*promcheck.Checker
	for i, u := range p.urls {
		if slices.Contains(p.urls[:i], u) {
			return nil, fmt.Errorf("--prometheus.url=%s is given twice", u)
		}
		c, err := promcheck.New(promcheck.Config{URL: u, Client: client, SlotHold: hold, FinalScrapeTimeout: final})
		if err != nil {
			return nil, fmt.Errorf("--prometheus.url: %w", err)
		}
		cs = append(cs, c)
	}
	return cs, nil
}

// parseZeroIsOff parses a duration flag whose 0s turns a rule off into
// the Config value it means (cliflags.ZeroIsOff).
func parseZeroIsOff(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	return cliflags.ZeroIsOff(d)
}

// httpClient is an HTTP client with the settings of file (Prometheus'
// HTTP client configuration), or the defaults without one; an error names
// flag.
func httpClient(flag, file, clientName string) (*http.Client, error) {
	cfg := config.DefaultHTTPClientConfig
	if file != "" {
		c, _, err := config.LoadHTTPConfigFile(file)
		if err != nil {
			return nil, fmt.Errorf("%s=%s: %w", flag, file, err)
		}
		cfg = *c
	}
	client, err := config.NewClientFromConfig(cfg, clientName, config.WithUserAgent(name+"/"+version.Version))
	if err != nil {
		return nil, fmt.Errorf("%s=%s: %w", flag, file, err)
	}
	return client, nil
}
