// Package kubernetes holds no code: its tests build every kustomize overlay
// of deploy/kubernetes and check what they produce (strict decoding into the
// Kubernetes and Prometheus Operator types, the ScrapeConfig against the
// operator's CRD schema, the pod's wiring), and run the example pod
// simulated with Linux namespaces. A module of its own, so that the
// Kubernetes, kustomize and operator modules stay out of workersd's go.mod.
package kubernetes
