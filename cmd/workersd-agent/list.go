package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/workersd/workersd/agent"
)

// list is `workersd-agent list`: the workers a running agent registered,
// as a table, asked over its Unix socket. It returns the exit code.
func list(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := kingpin.New(name+" list", "Prints the workers a running agent registered: one line each, by job and slot.")
	app.HelpFlag.Short('h')
	app.UsageWriter(stderr)
	app.ErrorWriter(stderr)
	socket := app.Flag("listen.socket", "Unix socket of the agent's API.").Default(defaultSocket).String()
	timeout := app.Flag("timeout", "How long to wait for the agent.").Default("5s").Duration()
	if _, err := app.Parse(args); err != nil {
		fmt.Fprintf(stderr, "%s list: error: %v, try --help\n", name, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	workers, err := fetchWorkers(ctx, *socket)
	if err != nil {
		fmt.Fprintf(stderr, "%s list: %v\n", name, err)
		return 1
	}
	writeTable(stdout, workers, time.Now())
	return 0
}

func fetchWorkers(ctx context.Context, socket string) ([]agent.Worker, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/v1/workers", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking the agent on %s: %w", socket, err)
	}
	defer resp.Body.Close()
	var body struct {
		Workers []agent.Worker `json:"workers"`
		Error   string         `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&body); err != nil {
		return nil, fmt.Errorf("the agent on %s answered %s: %w", socket, resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the agent on %s answered %s: %s", socket, resp.Status, body.Error)
	}
	return body.Workers, nil
}

// writeTable prints workers by job, slot and pid; a worker not registered
// yet (slot -1) comes first in its job, with its error.
func writeTable(w io.Writer, workers []agent.Worker, now time.Time) {
	slices.SortFunc(workers, func(a, b agent.Worker) int {
		return cmp.Or(cmp.Compare(a.Job, b.Job), cmp.Compare(a.Slot, b.Slot), cmp.Compare(a.PID, b.PID))
	})
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tJOB\tSLOT\tSTATE\tADDRESS\tLEASE\tWATCH\tUPTIME\tKEY")
	for _, wk := range workers {
		slot := strconv.Itoa(wk.Slot)
		if wk.Slot < 0 {
			slot = "-"
		}
		state := wk.State
		if wk.Error != "" {
			state += " (" + wk.Error + ")"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wk.PID, wk.Job, slot, state, wk.Address,
			dash(wk.Lease), wk.Watch, now.Sub(wk.StartedAt).Round(time.Second), dash(wk.Key))
	}
	tw.Flush()
	fmt.Fprintf(w, "%d workers\n", len(workers))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
