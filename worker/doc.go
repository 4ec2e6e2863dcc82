// Package worker is what an application process embeds to become its own
// Prometheus scrape target.
//
// A pre-fork server or a job-worker pool runs one application as many
// processes; scraping one shared port samples a random process, and shared-file
// aggregation grows with every dead worker. Instead each process serves its own
// metrics on an ephemeral port and announces that port in etcd (package
// registrar); Prometheus discovers every process and PromQL sums them.
//
// Three calls are enough:
//
//	w, err := worker.Start(ctx, worker.Config{Job: "api"})
//	w.Registry().MustRegister(myCounter)
//	defer w.Stop(context.Background())
//
// The order of start-up matters: the listener is opened first (so /metrics is
// served at once, even when etcd is down), then the registration is started in
// the background. The order of shut-down matters too: Stop waits for one scrape
// that begins after Stop was called (so nothing counted in the last seconds is
// lost), then revokes the registration, then closes the listener.
//
// The Tracer makes long units of work honest: a unit that runs for 60 s while
// Prometheus scrapes every 15 s adds about 15 s at each scrape instead of
// nothing, nothing, nothing and then 60 s at once.
package worker
