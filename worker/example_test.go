package worker_test

import (
	"context"
	"log"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/workersd/workersd/worker"
)

// A worker process: its own /metrics on an ephemeral port, registered in
// etcd for as long as it runs (README.md shows this function's body).
func Example() {
	if err := serve(context.Background()); err != nil {
		log.Fatal(err)
	}
}

func serve(ctx context.Context) error {
	// Listens on :0 and registers in etcd at 127.0.0.1:2379.
	w, err := worker.Start(ctx, worker.Config{Job: "api"})
	if err != nil {
		return err
	}
	// Waits for a final scrape, then deregisters.
	defer w.Stop(context.Background())
	jobs := promauto.With(w.Registry()).NewCounter(prometheus.CounterOpts{Name: "jobs_total", Help: "Jobs done."})
	for range 10 {
		jobs.Inc() // your work
	}
	return nil
}
