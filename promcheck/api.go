package promcheck

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// maxAnswer bounds an API answer read into memory: the targets of a large
// fleet are tens of MB; anything larger is not an answer to check.
const maxAnswer = 256 << 20

// apiError is an answer that is not Prometheus' API: it becomes the
// prometheus_unreachable finding.
type apiError struct{ msg string }

func (e *apiError) Error() string { return e.msg }

// get asks the Prometheus API at base for path and decodes its data into
// data.
func get(ctx context.Context, client *http.Client, base *url.URL, path string, params url.Values, data any) error {
	u := base.JoinPath(path)
	if params != nil {
		u.RawQuery = params.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return &apiError{fmt.Sprintf("%s: %v", u.Redacted(), err)}
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return &apiError{fmt.Sprintf("cannot reach it: %v", err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return &apiError{fmt.Sprintf("GET %s: reading the answer: %v", path, err)}
	}
	if len(body) > maxAnswer {
		return &apiError{fmt.Sprintf("GET %s: the answer is larger than %d MiB", path, maxAnswer>>20)}
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return &apiError{fmt.Sprintf("GET %s: %s: the server wants credentials (--prometheus.http-config-file)", path, resp.Status)}
	}
	var answer struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode == http.StatusServiceUnavailable && mt != "application/json" {
		return &apiError{fmt.Sprintf("GET %s: %s: Prometheus answers so while it starts (replaying its WAL) or when it is overloaded", path, resp.Status)}
	}
	if mt != "application/json" || json.Unmarshal(body, &answer) != nil || answer.Status == "" {
		return &apiError{fmt.Sprintf("GET %s: %s, %s: not an answer of Prometheus' HTTP API; is this the URL of a Prometheus server (with its --web.route-prefix)?", path, resp.Status, describeBody(mt, body))}
	}
	if answer.Status != "success" {
		return &apiError{fmt.Sprintf("GET %s: %s: %s: %s", path, resp.Status, answer.ErrorType, answer.Error)}
	}
	if err := json.Unmarshal(answer.Data, data); err != nil {
		return &apiError{fmt.Sprintf("GET %s: unexpected data: %v", path, err)}
	}
	return nil
}

func describeBody(mediaType string, body []byte) string {
	if mediaType == "" {
		mediaType = "no content type"
	}
	s := strings.Join(strings.Fields(string(body[:min(len(body), 80)])), " ")
	if s == "" {
		return mediaType + ", empty"
	}
	return fmt.Sprintf("%s %q", mediaType, s)
}

// server is what one Prometheus server told about itself.
type server struct {
	version string
	flags   map[string]string
	config  string // the loaded configuration, YAML
}

func fetchServer(ctx context.Context, client *http.Client, base *url.URL) (*server, error) {
	var s server
	var build struct {
		Version string `json:"version"`
	}
	var cfg struct {
		YAML string `json:"yaml"`
	}
	if err := get(ctx, client, base, "/api/v1/status/buildinfo", nil, &build); err != nil {
		return nil, err
	}
	if err := get(ctx, client, base, "/api/v1/status/flags", nil, &s.flags); err != nil {
		return nil, err
	}
	if err := get(ctx, client, base, "/api/v1/status/config", nil, &cfg); err != nil {
		return nil, err
	}
	s.version, s.config = build.Version, cfg.YAML
	return &s, nil
}

// activeTarget is one entry of /api/v1/targets' activeTargets.
type activeTarget struct {
	DiscoveredLabels map[string]string `json:"discoveredLabels"`
	Labels           map[string]string `json:"labels"`
	ScrapePool       string            `json:"scrapePool"`
	ScrapeURL        string            `json:"scrapeUrl"`
	LastError        string            `json:"lastError"`
	Health           string            `json:"health"`
}

func fetchTargets(ctx context.Context, client *http.Client, base *url.URL) ([]activeTarget, error) {
	var t struct {
		Active []activeTarget `json:"activeTargets"`
	}
	if err := get(ctx, client, base, "/api/v1/targets", url.Values{"state": {"active"}}, &t); err != nil {
		return nil, err
	}
	return t.Active, nil
}
