package promcheck

import (
	"cmp"
	"slices"
)

// Severity says whether a finding makes totals wrong (error) or may
// (warning).
type Severity string

const (
	// Error: totals are wrong, or nothing can be checked.
	Error Severity = "error"
	// Warning: right for some setups, wrong for others; read the finding.
	Warning Severity = "warning"
)

// The IDs of the findings: stable (alerts and pipelines match them), and a
// bounded set (they label a metric). docs/CHECKS.md explains each.
const (
	// The server did not answer its HTTP API as Prometheus does:
	// unreachable, unauthorised, or not Prometheus.
	IDUnreachable = "prometheus_unreachable"
	// Its loaded configuration could not be read.
	IDConfigUnreadable = "prometheus_config_unreadable"
	// Prometheus 2.x: restarts are missed (no created timestamps).
	IDVersion2 = "prometheus_2"
	// Prometheus 3 without created-timestamp-zero-ingestion.
	IDCreatedTimestampsOff = "created_timestamps_off"
	// No scrape job reads sdwriter's output.
	IDOutputNotRead = "output_not_read"
	// More than one scrape job reads the same targets: each is scraped
	// twice and every sum counts it twice.
	IDOutputReadTwice = "output_read_twice"
	// The scrape interval is too long for the slot hold or the final
	// scrape.
	IDScrapeIntervalTooLong = "scrape_interval_too_long"
	// The scrape protocols put a format without created timestamps first.
	IDScrapeProtocols = "scrape_protocols_without_created"
	// A hashmod's modulus differs from sdwriter's --output.shards.
	IDHashmodModulus = "hashmod_modulus"
	// A hashmod keeps another shard than the one the job reads.
	IDHashmodWrongShard = "hashmod_wrong_shard"
	// A hashmod hashes something other than the instance label.
	IDHashmodNotOnInstance = "hashmod_not_on_instance"
	// Relabelling drops some of sdwriter's targets.
	IDRelabelDropsTargets = "relabel_drops_targets"
	// Relabelling rewrites the instance label.
	IDRelabelRewritesInstance = "relabel_rewrites_instance"
	// Relabelling rewrites the job label.
	IDRelabelRewritesJob = "relabel_rewrites_job"
	// honor_labels: true.
	IDHonorLabels = "honor_labels"
	// A target sdwriter serves is not an active target.
	IDTargetMissing = "target_missing"
	// A target sdwriter serves is down.
	IDTargetDown = "target_down"
	// The job scrapes a target sdwriter does not serve.
	IDTargetNotServed = "target_not_served"
)

// IDs lists every finding ID with its severity, in a fixed order.
var IDs = []struct {
	ID       string
	Severity Severity
}{
	{IDUnreachable, Error},
	{IDConfigUnreadable, Error},
	{IDVersion2, Warning},
	{IDCreatedTimestampsOff, Error},
	{IDOutputNotRead, Error},
	{IDOutputReadTwice, Error},
	{IDScrapeIntervalTooLong, Error},
	{IDScrapeProtocols, Error},
	{IDHashmodModulus, Error},
	{IDHashmodWrongShard, Error},
	{IDHashmodNotOnInstance, Warning},
	{IDRelabelDropsTargets, Warning},
	{IDRelabelRewritesInstance, Error},
	{IDRelabelRewritesJob, Warning},
	{IDHonorLabels, Warning},
	{IDTargetMissing, Error},
	{IDTargetDown, Error},
	{IDTargetNotServed, Error},
}

func severityOf(id string) Severity {
	for _, s := range IDs {
		if s.ID == id {
			return s.Severity
		}
	}
	return Error
}

// maxExamples bounds the targets a finding names.
const maxExamples = 5

// Finding is one thing wrong with how a Prometheus server reads sdwriter.
type Finding struct {
	ID       string   `json:"id"`
	Severity Severity `json:"severity"`
	// Job is the scrape job it concerns; empty for the server as a whole.
	Job string `json:"job,omitempty"`
	// Message says what is wrong, Cost what it does to the numbers
	// (measured, docs/RESTARTS.md), Fix what to change.
	Message string `json:"message"`
	Cost    string `json:"cost,omitempty"`
	Fix     string `json:"fix"`
	// Targets names some of the targets concerned (at most 5) and Count
	// how many there are, for findings about targets.
	Targets []string `json:"targets,omitempty"`
	Count   int      `json:"count,omitempty"`
}

func newFinding(id, job, message, cost, fix string) Finding {
	return Finding{ID: id, Severity: severityOf(id), Job: job, Message: message, Cost: cost, Fix: fix}
}

func sortFindings(fs []Finding) {
	slices.SortStableFunc(fs, func(a, b Finding) int {
		if a.Severity != b.Severity {
			if a.Severity == Error {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(a.Job, b.Job), cmp.Compare(a.ID, b.ID))
	})
}
