package embedetcd

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// KeepAlivesReceived is etcd's count of LeaseKeepAlive stream messages
// received (grpc_server_msg_received_total): the keep-alive requests of
// every client of the members embedded in this process, whose gRPC server
// registers its metrics on the default registry.
func KeepAlivesReceived() (float64, error) {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != "grpc_server_msg_received_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "grpc_method" && l.GetValue() == "LeaseKeepAlive" {
					return m.GetCounter().GetValue(), nil
				}
			}
		}
	}
	return 0, errors.New("etcd's grpc_server_msg_received_total{grpc_method=LeaseKeepAlive} not found")
}
