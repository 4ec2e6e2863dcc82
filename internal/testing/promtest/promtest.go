// Package promtest reads what a real Prometheus server stored, for the
// end-to-end tests of exact totals: raw samples through the HTTP API, the
// reset-aware total a reader of them computes, and sum(increase) over a
// window. The suite (integration/) and the server examples (gunicorn) check
// exactness the same way.
package promtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

var client = &http.Client{Timeout: 10 * time.Second}

// Sample is one raw sample: Unix seconds and value.
type Sample struct{ T, V float64 }

// Series is the raw samples of one series.
type Series struct {
	Metric  map[string]string
	Samples []Sample
}

// Range renders d as a PromQL range in whole milliseconds.
func Range(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }

func unix(t time.Time) string { return strconv.FormatFloat(float64(t.UnixNano())/1e9, 'f', 3, 64) }

// API calls one endpoint of Prometheus' HTTP API (path such as
// "/api/v1/series") and decodes the data of a successful answer into data.
func API(promURL, path string, params url.Values, data any) error {
	resp, err := client.Get(promURL + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var r struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s %s: %s", path, params.Encode(), r.Error)
	}
	return json.Unmarshal(r.Data, data)
}

// query runs an instant query at time at and decodes its result.
func query(promURL, q string, at time.Time, resultType string, result any) error {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := API(promURL, "/api/v1/query", url.Values{"query": {q}, "time": {unix(at)}}, &data); err != nil {
		return err
	}
	if data.ResultType != resultType {
		return fmt.Errorf("%s: result type %s, want %s", q, data.ResultType, resultType)
	}
	return json.Unmarshal(data.Result, result)
}

func point(p []any) (Sample, error) {
	if len(p) != 2 {
		return Sample{}, fmt.Errorf("point %v", p)
	}
	ts, ok := p[0].(float64)
	vs, ok2 := p[1].(string)
	if !ok || !ok2 {
		return Sample{}, fmt.Errorf("point %v", p)
	}
	v, err := strconv.ParseFloat(vs, 64)
	return Sample{T: ts, V: v}, err
}

// RawSamples returns every sample Prometheus stored for the series
// matching sel in (start, end], synthetic created-timestamp zeros included.
func RawSamples(promURL, sel string, start, end time.Time) ([]Series, error) {
	var result []struct {
		Metric map[string]string `json:"metric"`
		Values [][]any           `json:"values"`
	}
	if err := query(promURL, fmt.Sprintf("%s[%s]", sel, Range(end.Sub(start))), end, "matrix", &result); err != nil {
		return nil, err
	}
	out := make([]Series, 0, len(result))
	for _, r := range result {
		s := Series{Metric: r.Metric}
		for _, p := range r.Values {
			smp, err := point(p)
			if err != nil {
				return nil, err
			}
			s.Samples = append(s.Samples, smp)
		}
		out = append(out, s)
	}
	return out, nil
}

// ResetAwareTotal is what a reader of raw samples counts: each series from
// 0; a sample below the previous one is a counter reset, after which it
// counts in full. It misses a restart exactly when Prometheus stored no
// sample below the old lifetime's last value (no created-timestamp zero).
func ResetAwareTotal(ss []Series) float64 {
	total := 0.0
	for _, s := range ss {
		prev := 0.0
		for _, p := range s.Samples {
			if p.V >= prev {
				total += p.V - prev
			} else {
				total += p.V
			}
			prev = p.V
		}
	}
	return total
}

// Totals is the reset-aware total of sel's raw samples in (start, end] and
// sum(increase(sel[end-start])) evaluated at end (0 when no series).
func Totals(promURL, sel string, start, end time.Time) (raw, increase float64, err error) {
	ss, err := RawSamples(promURL, sel, start, end)
	if err != nil {
		return 0, 0, err
	}
	var result []struct {
		Value []any `json:"value"`
	}
	q := fmt.Sprintf("sum(increase(%s[%s]))", sel, Range(end.Sub(start)))
	if err := query(promURL, q, end, "vector", &result); err != nil {
		return 0, 0, err
	}
	if len(result) == 1 {
		smp, err := point(result[0].Value)
		if err != nil {
			return 0, 0, err
		}
		increase = smp.V
	}
	return ResetAwareTotal(ss), increase, nil
}
