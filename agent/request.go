package agent

import (
	"maps"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/workersd/workersd/internal/netaddr"
	"github.com/workersd/workersd/registrar"
)

// value validates a request and builds the value to register.
func (a *Agent) value(req Request) (registrar.Value, error) {
	if err := registrar.ValidateName("job", req.Job); err != nil {
		return registrar.Value{}, fromFieldErr(err)
	}
	if req.PID <= 0 {
		return registrar.Value{}, apiErr(http.StatusBadRequest, "pid", "pid: required, the worker's process id (> 0)")
	}
	addr := req.Address
	switch {
	case req.Address != "" && req.Port != 0:
		return registrar.Value{}, apiErr(http.StatusBadRequest, "port", "give either port or address, not both")
	case req.Address != "":
		if err := a.checkAddress(req.Address); err != nil {
			return registrar.Value{}, err
		}
	case req.Address == "":
		if req.Port < 1 || req.Port > 65535 {
			return registrar.Value{}, apiErr(http.StatusBadRequest, "port", "port: %d is out of range 1-65535 (or give address)", req.Port)
		}
		addr = net.JoinHostPort(a.advertiseHost(), strconv.Itoa(req.Port))
	}
	v := registrar.Value{
		Address: addr, Scheme: req.Scheme, MetricsPath: req.MetricsPath, PID: req.PID,
	}
	if len(req.Labels) > 0 {
		v.Labels = maps.Clone(req.Labels)
	}
	if err := v.Validate(); err != nil {
		return registrar.Value{}, fromFieldErr(err)
	}
	return v, nil
}

// checkAddress accepts only addresses of this host: loopback, the host's
// own interface addresses, or AllowAddresses. Anything else would let any
// local user make Prometheus fetch any host and path (server-side request
// forgery through the monitoring system).
func (a *Agent) checkAddress(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fromFieldErr(registrar.ValidateAddress(addr))
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return apiErr(http.StatusBadRequest, "address", "%q: the host must be an IP address of this host (or give port alone)", addr)
	}
	ip = ip.Unmap()
	if ip.IsLoopback() {
		return nil
	}
	for _, p := range a.cfg.AllowAddresses {
		if p.Contains(ip) {
			return nil
		}
	}
	if ifaddrs, err := net.InterfaceAddrs(); err == nil {
		for _, ia := range ifaddrs {
			if n, ok := ia.(*net.IPNet); ok {
				if own, ok := netip.AddrFromSlice(n.IP); ok && own.Unmap() == ip {
					return nil
				}
			}
		}
	}
	if a.cfg.AdvertiseHost != "" && strings.Trim(a.cfg.AdvertiseHost, "[]") == ip.String() {
		return nil
	}
	a.m.Refusals.WithLabelValues("foreign_address").Inc()
	return apiErr(http.StatusForbidden, "address", "%s is not an address of this host; only its own addresses, loopback and --allow-address networks are accepted", addr)
}

// advertiseHost is the host registered for a request that gives a port.
func (a *Agent) advertiseHost() string {
	return netaddr.AdvertiseHost(a.cfg.AdvertiseHost, a.cfg.Client.Endpoints(), a.cfg.Host, func(ep string, err error) {
		a.log.Warn("cannot tell which local address reaches etcd; advertising the host name", "endpoint", ep, "error", err)
	})
}

func sameValue(x, y registrar.Value) bool {
	return x.Address == y.Address && x.Scheme == y.Scheme && x.MetricsPath == y.MetricsPath &&
		x.PID == y.PID && maps.Equal(x.Labels, y.Labels)
}
