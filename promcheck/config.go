package promcheck

import (
	"fmt"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/relabel"
	"go.yaml.in/yaml/v2"
)

// promConfig is the part of a loaded Prometheus configuration the checks
// read. It is parsed here rather than with Prometheus' config package: that
// one rejects any service discovery not compiled into this binary
// (kubernetes_sd_configs, ec2_sd_configs, ...), and a configuration that
// Prometheus loaded is valid; what matters is reading these fields.
type promConfig struct {
	Global struct {
		ScrapeInterval  model.Duration `yaml:"scrape_interval"`
		ScrapeTimeout   model.Duration `yaml:"scrape_timeout"`
		ScrapeProtocols []string       `yaml:"scrape_protocols"`
	} `yaml:"global"`
	ScrapeConfigs []*scrapeConfig `yaml:"scrape_configs"`
}

type scrapeConfig struct {
	JobName         string         `yaml:"job_name"`
	HonorLabels     bool           `yaml:"honor_labels"`
	ScrapeInterval  model.Duration `yaml:"scrape_interval"`
	ScrapeTimeout   model.Duration `yaml:"scrape_timeout"`
	ScrapeProtocols []string       `yaml:"scrape_protocols"`
	FileSD          []struct {
		Files []string `yaml:"files"`
	} `yaml:"file_sd_configs"`
	HTTPSD []struct {
		URL string `yaml:"url"`
	} `yaml:"http_sd_configs"`
	RelabelConfigs []*relabel.Config `yaml:"relabel_configs"`
}

// defaultScrapeInterval is Prometheus' global default.
const defaultScrapeInterval = time.Minute

func parseConfig(s string) (*promConfig, error) {
	var c promConfig
	if err := yaml.Unmarshal([]byte(s), &c); err != nil {
		return nil, err
	}
	for _, sc := range c.ScrapeConfigs {
		if sc == nil {
			return nil, fmt.Errorf("an empty scrape config")
		}
		if sc.ScrapeInterval == 0 {
			sc.ScrapeInterval = c.Global.ScrapeInterval
		}
		if sc.ScrapeInterval == 0 {
			sc.ScrapeInterval = model.Duration(defaultScrapeInterval)
		}
		if sc.ScrapeTimeout == 0 {
			sc.ScrapeTimeout = min(c.Global.ScrapeTimeout, sc.ScrapeInterval)
		}
		if sc.ScrapeProtocols == nil {
			sc.ScrapeProtocols = c.Global.ScrapeProtocols
		}
		for i, rc := range sc.RelabelConfigs {
			if rc == nil {
				return nil, fmt.Errorf("job %s: relabel config %d is empty", sc.JobName, i+1)
			}
			if err := rc.Validate(model.UTF8Validation); err != nil {
				return nil, fmt.Errorf("job %s: relabel config %d: %w", sc.JobName, i+1, err)
			}
		}
	}
	return &c, nil
}
