package kubernetes

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	monitoringv1alpha1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1alpha1"
	"github.com/prometheus/common/promslog"
	promconfig "github.com/prometheus/prometheus/config"
	_ "github.com/prometheus/prometheus/discovery/http"       // http_sd_configs
	_ "github.com/prometheus/prometheus/discovery/kubernetes" // kubernetes_sd_configs
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"
)

// operatorModule is the Prometheus Operator release whose ScrapeConfig CRD
// the manifests are checked against; its API types module is pinned to
// the same version in go.mod.
const operatorModule = "github.com/prometheus-operator/prometheus-operator@v0.94.0"

// overlays are every kustomization a user applies.
var overlays = []string{"overlays/cluster", "overlays/embedded", "overlays/operator"}

// object is one manifest of a build, decoded.
type object struct {
	kind, namespace, name string
	obj                   runtime.Object
	raw                   []byte // JSON
}

// build runs kustomize on dir, as `kubectl apply -k` would, and decodes
// every object strictly: an unknown or duplicate field, or a wrong type,
// fails.
func build(t *testing.T, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	sch := runtime.NewScheme()
	if err := scheme.AddToScheme(sch); err != nil {
		t.Fatal(err)
	}
	dec := serializer.NewCodecFactory(sch, serializer.EnableStrict).UniversalDeserializer()
	var out []object
	for _, r := range rm.Resources() {
		raw, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		o := object{kind: r.GetKind(), namespace: r.GetNamespace(), name: r.GetName(), raw: raw}
		if strings.HasPrefix(r.GetApiVersion(), monitoringv1.SchemeGroupVersion.Group+"/") {
			switch o.kind {
			case monitoringv1alpha1.ScrapeConfigsKind:
				o.obj = &monitoringv1alpha1.ScrapeConfig{}
			case monitoringv1.PodMonitorsKind:
				o.obj = &monitoringv1.PodMonitor{}
			default:
				t.Fatalf("%s: no check for %s", dir, o.kind)
			}
			if err := sigsyaml.UnmarshalStrict(raw, o.obj); err != nil {
				t.Errorf("%s: %s %s/%s: %v", dir, o.kind, o.namespace, o.name, err)
			}
		} else {
			obj, _, err := dec.Decode(raw, nil, nil)
			if err != nil {
				t.Errorf("%s: %s %s/%s: %v", dir, o.kind, o.namespace, o.name, err)
				continue
			}
			o.obj = obj
		}
		if o.kind != "Namespace" && o.namespace == "" {
			t.Errorf("%s: %s %s has no namespace", dir, o.kind, o.name)
		}
		out = append(out, o)
	}
	return out
}

var update = flag.Bool("update", false, "write built/<overlay>.yaml anew")

// built/<overlay>.yaml is what `kubectl apply -k overlays/<overlay>` applies,
// as kustomize builds it now: what a reviewer reads, and what
// examples/gunicorn's TestGunicornPod runs (go test -update writes it).
func TestBuiltOverlaysAreCommitted(t *testing.T) {
	for _, dir := range overlays {
		rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
		if err != nil {
			t.Fatalf("kustomize build %s: %v", dir, err)
		}
		got, err := rm.AsYaml()
		if err != nil {
			t.Fatal(err)
		}
		got = append([]byte("# kustomize build deploy/kubernetes/"+dir+"; written by go test -update, do not edit\n"), got...)
		file := filepath.Join("built", filepath.Base(dir)+".yaml")
		if *update {
			if err := os.MkdirAll("built", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%v (go test -update writes it)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is not what kustomize builds from %s: run go test -update in deploy/kubernetes", file, dir)
		}
	}
}

// Every overlay builds, and every object in it decodes strictly into the
// API's Go types (k8s.io/api, the operator's), with no unknown field.
func TestOverlaysBuildAndDecodeStrictly(t *testing.T) {
	for _, dir := range overlays {
		t.Run(dir, func(t *testing.T) {
			objs := build(t, dir)
			kinds := map[string]int{}
			for _, o := range objs {
				kinds[o.kind]++
			}
			for _, want := range []string{"Namespace", "Deployment", "Service", "NetworkPolicy", "ServiceAccount"} {
				if kinds[want] == 0 {
					t.Errorf("no %s in %s: %v", want, dir, kinds)
				}
			}
		})
	}
}

// The operator's objects (the ScrapeConfig, sdwriter's PodMonitor) pass
// the operator's own CRD schemas: OpenAPI validation, pruning (a field the
// schema does not know would be dropped by the API server: here it fails)
// and the CEL rules, as an API server applies them.
func TestOperatorObjectsMatchCRDs(t *testing.T) {
	crds := filepath.Join(moduleDir(t, operatorModule), "example", "prometheus-operator-crd")
	found := map[string]bool{}
	for _, dir := range overlays {
		for _, o := range build(t, dir) {
			var u map[string]any
			if err := json.Unmarshal(o.raw, &u); err != nil {
				t.Fatal(err)
			}
			group, version, _ := strings.Cut(u["apiVersion"].(string), "/")
			if group != monitoringv1.SchemeGroupVersion.Group {
				continue
			}
			found[o.kind] = true
			if errs := crdCheck(t, crds, o.kind, version)(o.raw); len(errs) > 0 {
				t.Errorf("%s: %s %s: %v", dir, o.kind, o.name, errs.ToAggregate())
			}
		}
	}
	if !found[monitoringv1alpha1.ScrapeConfigsKind] || !found[monitoringv1.PodMonitorsKind] {
		t.Fatalf("want a ScrapeConfig and a PodMonitor in the overlays, found %v", found)
	}
	// The check rejects what an API server would: an unknown field, a
	// wrong type.
	check := crdCheck(t, crds, monitoringv1alpha1.ScrapeConfigsKind, "v1alpha1")
	for _, bad := range []string{
		`{"apiVersion":"monitoring.coreos.com/v1alpha1","kind":"ScrapeConfig","metadata":{"name":"x"},"spec":{"httpSDConfigs":[{"url":"http://a/sd","refreshIntervall":"5s"}]}}`,
		`{"apiVersion":"monitoring.coreos.com/v1alpha1","kind":"ScrapeConfig","metadata":{"name":"x"},"spec":{"httpSDConfigs":[{"url":"http://a/sd","refreshInterval":"five seconds"}]}}`,
		`{"apiVersion":"monitoring.coreos.com/v1alpha1","kind":"ScrapeConfig","metadata":{"name":"x"},"spec":{"scrapeInterval":10}}`,
	} {
		if errs := check([]byte(bad)); len(errs) == 0 {
			t.Errorf("the CRD check accepts %s", bad)
		}
	}
}

// crdCheck returns the validation of the API server for version of kind,
// from the operator's CRD file for it.
func crdCheck(t *testing.T, crds, kind, version string) func(raw []byte) field.ErrorList {
	t.Helper()
	crdFile := filepath.Join(crds, "monitoring.coreos.com_"+strings.ToLower(kind)+"s.yaml")
	b, err := os.ReadFile(crdFile)
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := sigsyaml.Unmarshal(b, &crd); err != nil {
		t.Fatalf("%s: %v", crdFile, err)
	}
	var schema *apiextensionsv1.JSONSchemaProps
	for _, v := range crd.Spec.Versions {
		if v.Name == version && v.Schema != nil {
			schema = v.Schema.OpenAPIV3Schema
		}
	}
	if crd.Spec.Names.Kind != kind || schema == nil {
		t.Fatalf("%s: no schema of %s %s", crdFile, kind, version)
	}
	var internal apiextensions.JSONSchemaProps
	if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(schema, &internal, nil); err != nil {
		t.Fatal(err)
	}
	validator, _, err := validation.NewSchemaValidator(&internal)
	if err != nil {
		t.Fatal(err)
	}
	structural, err := structuralschema.NewStructural(&internal)
	if err != nil {
		t.Fatal(err)
	}
	celValidator := cel.NewValidator(structural, true, celconfig.PerCallLimit)
	return func(raw []byte) field.ErrorList {
		var u map[string]any
		if err := json.Unmarshal(raw, &u); err != nil {
			t.Fatal(err)
		}
		errs := validation.ValidateCustomResource(nil, u, validator)
		for _, p := range pruning.PruneWithOptions(u, structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true}) {
			errs = append(errs, field.Invalid(field.NewPath(p), nil, "unknown field: the API server would drop it"))
		}
		if celValidator != nil {
			cerrs, _ := celValidator.Validate(context.Background(), nil, structural, u, nil, celconfig.RuntimeCELCostBudget)
			errs = append(errs, cerrs...)
		}
		return errs
	}
}

// moduleDir downloads a Go module (scripts/test has, so this is the
// cache) and returns its directory.
func moduleDir(t *testing.T, mod string) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", mod).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v\n%s", mod, err, out)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil || m.Error != "" || m.Dir == "" {
		t.Fatalf("go mod download %s: %v %s", mod, err, out)
	}
	return m.Dir
}

// The plain Prometheus job is a file Prometheus 3's own loader accepts,
// reading sdwriter's Service through http_sd.
func TestPrometheusScrapeFileLoads(t *testing.T) {
	for _, dir := range []string{"overlays/cluster", "overlays/embedded"} {
		var data string
		for _, o := range build(t, dir) {
			if cm, ok := o.obj.(*corev1.ConfigMap); ok && cm.Name == "prometheus-workersd" {
				data = cm.Data["workersd-scrape.yml"]
			}
		}
		if data == "" {
			t.Fatalf("%s: no ConfigMap prometheus-workersd with workersd-scrape.yml", dir)
		}
		tmp := t.TempDir()
		scrape := filepath.Join(tmp, "workersd-scrape.yml")
		main := filepath.Join(tmp, "prometheus.yml")
		if err := os.WriteFile(scrape, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(main, []byte("scrape_config_files: [workersd-scrape.yml]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := promconfig.LoadFile(main, false, promslog.NewNopLogger())
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		scs, err := cfg.GetScrapeConfigs()
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		jobs := map[string]string{}
		for _, sc := range scs {
			for _, sd := range sc.ServiceDiscoveryConfigs {
				jobs[sc.JobName] += sd.Name()
			}
		}
		if want := map[string]string{"workersd": "http", "workersd-sdwriter": "kubernetes"}; !maps.Equal(jobs, want) {
			t.Fatalf("%s: jobs and their discovery %v, want %v", dir, jobs, want)
		}
	}
}

// The pod as docs/KUBERNETES.md describes it, in every overlay: the agent
// a native sidecar that sees the workers' pids, its socket on an emptyDir
// shared with the application at the path both are given, the pod's name
// and IP from the downward API, a grace period for the final scrapes; and
// every selector selects something.
func TestAppPod(t *testing.T) {
	for _, dir := range overlays {
		t.Run(dir, func(t *testing.T) {
			objs := build(t, dir)
			d := find[*appsv1.Deployment](t, objs, "example-gunicorn")
			p := d.Spec.Template.Spec
			if p.ShareProcessNamespace == nil || !*p.ShareProcessNamespace {
				t.Error("shareProcessNamespace is not true: the agent would not see the workers' pids")
			}
			agent := container(t, p.InitContainers, "workersd-agent")
			if agent.RestartPolicy == nil || *agent.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Error("the agent is not a native sidecar (an init container with restartPolicy: Always)")
			}
			if agent.StartupProbe == nil {
				t.Error("the agent has no startup probe: gunicorn could start before its API listens")
			}
			app := container(t, p.Containers, "app")
			args := agent.Args
			if got := flagValue(args, "--host"); got != "$(POD_NAME)" {
				t.Errorf("--host=%q, want the pod's name", got)
			}
			if got := flagValue(args, "--advertise.host"); got != "$(POD_IP)" {
				t.Errorf("--advertise.host=%q, want the pod's IP", got)
			}
			for name, path := range map[string]string{"POD_NAME": "metadata.name", "POD_IP": "status.podIP"} {
				if got := fieldRef(agent, name); got != path {
					t.Errorf("the agent's %s comes from %q, want the downward API's %s", name, got, path)
				}
			}
			socket := flagValue(args, "--listen.socket")
			if got := env(app, "WORKERSD_AGENT_SOCKET"); got != socket {
				t.Errorf("the application looks for the agent at %q, the agent listens on %q", got, socket)
			}
			for _, f := range []string{"--listen.socket", "--state.file"} {
				if v := mountOf(agent, filepath.Dir(flagValue(args, f))); v == "" || emptyDir(p, v) == nil {
					t.Errorf("%s=%s is not on an emptyDir", f, flagValue(args, f))
				}
			}
			if a, b := mountOf(agent, filepath.Dir(socket)), mountOf(app, filepath.Dir(socket)); a == "" || a != b {
				t.Errorf("the socket's directory is volume %q in the agent, %q in the application", a, b)
			}
			// The agent lets a caller act on its own user's workers only.
			if p.SecurityContext == nil || p.SecurityContext.RunAsUser == nil {
				t.Error("the pod sets no runAsUser: the agent and the application could run as different users")
			}
			for _, c := range []*corev1.Container{agent, app} {
				if c.SecurityContext != nil && (c.SecurityContext.RunAsUser != nil || c.SecurityContext.RunAsGroup != nil) {
					t.Errorf("container %s sets its own user: the agent and the application must run as one", c.Name)
				}
			}
			// gunicorn's graceful_timeout (30 s, its default) bounds the
			// workers' final scrapes; the agent stops within 5 s after.
			if g := p.TerminationGracePeriodSeconds; g == nil || *g < 30+5 {
				t.Errorf("terminationGracePeriodSeconds %v: below gunicorn's 30 s and the agent's 5 s", g)
			}
			for _, c := range append(slices.Clone(p.InitContainers), p.Containers...) {
				for _, m := range c.VolumeMounts {
					if !slices.ContainsFunc(p.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) {
						t.Errorf("%s mounts %s, which is no volume of the pod", c.Name, m.Name)
					}
				}
			}
			checkSelectors(t, objs)
			checkVars(t, objs)
		})
	}
}

// checkVars fails on a $(VAR) in a container's command or arguments that
// its env does not define: the kubelet would pass it on as is.
func checkVars(t *testing.T, objs []object) {
	t.Helper()
	for _, o := range objs {
		p, ok := podSpec(o.obj)
		if !ok {
			continue
		}
		for _, c := range append(slices.Clone(p.InitContainers), p.Containers...) {
			for _, a := range append(slices.Clone(c.Command), c.Args...) {
				for _, m := range varRef.FindAllStringSubmatch(a, -1) {
					if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == m[1] }) {
						t.Errorf("%s %s, container %s: %s uses $(%s), which it does not define", o.kind, o.name, c.Name, a, m[1])
					}
				}
			}
		}
	}
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

func podSpec(obj runtime.Object) (corev1.PodSpec, bool) {
	switch w := obj.(type) {
	case *appsv1.Deployment:
		return w.Spec.Template.Spec, true
	case *appsv1.StatefulSet:
		return w.Spec.Template.Spec, true
	case *batchv1.Job:
		return w.Spec.Template.Spec, true
	}
	return corev1.PodSpec{}, false
}

// checkSelectors fails on a workload that does not select its own pods, and
// on a Service, NetworkPolicy or NetworkPolicy peer within the build that
// selects none of its pods (peers in other namespaces, Prometheus', are
// outside it).
func checkSelectors(t *testing.T, objs []object) {
	t.Helper()
	type pod struct {
		namespace string
		labels    labels.Set
	}
	var pods []pod
	for _, o := range objs {
		var sel *metav1.LabelSelector
		var tmpl map[string]string
		switch w := o.obj.(type) {
		case *appsv1.Deployment:
			sel, tmpl = w.Spec.Selector, w.Spec.Template.Labels
		case *appsv1.StatefulSet:
			sel, tmpl = w.Spec.Selector, w.Spec.Template.Labels
		case *batchv1.Job:
			tmpl = w.Spec.Template.Labels
		default:
			continue
		}
		if sel != nil && !selector(t, sel).Matches(labels.Set(tmpl)) {
			t.Errorf("%s %s does not select its own pods", o.kind, o.name)
		}
		pods = append(pods, pod{o.namespace, tmpl})
	}
	for _, o := range objs {
		if rb, ok := o.obj.(*rbacv1.RoleBinding); ok && !slices.ContainsFunc(objs, func(r object) bool {
			return r.kind == rb.RoleRef.Kind && r.name == rb.RoleRef.Name && r.namespace == rb.Namespace
		}) {
			t.Errorf("RoleBinding %s/%s binds %s %s, which is not in its namespace", rb.Namespace, rb.Name, rb.RoleRef.Kind, rb.RoleRef.Name)
		}
	}
	selects := func(ns string, sel labels.Selector) bool {
		return slices.ContainsFunc(pods, func(p pod) bool { return (ns == "" || p.namespace == ns) && sel.Matches(p.labels) })
	}
	for _, o := range objs {
		switch w := o.obj.(type) {
		case *corev1.Service:
			if !selects(w.Namespace, labels.SelectorFromSet(w.Spec.Selector)) {
				t.Errorf("Service %s/%s selects no pod", w.Namespace, w.Name)
			}
		case *networkingv1.NetworkPolicy:
			if !selects(w.Namespace, selector(t, &w.Spec.PodSelector)) {
				t.Errorf("NetworkPolicy %s/%s applies to no pod", w.Namespace, w.Name)
			}
			for _, in := range w.Spec.Ingress {
				for _, peer := range in.From {
					switch {
					case peer.PodSelector == nil:
					case peer.NamespaceSelector == nil:
						if !selects(w.Namespace, selector(t, peer.PodSelector)) {
							t.Errorf("NetworkPolicy %s/%s lets in pods %v, none of which is in its namespace", w.Namespace, w.Name, peer.PodSelector)
						}
					case len(peer.NamespaceSelector.MatchLabels) == 0 && len(peer.NamespaceSelector.MatchExpressions) == 0:
						if !selects("", selector(t, peer.PodSelector)) {
							t.Errorf("NetworkPolicy %s/%s lets in pods %v, none of which is in the build", w.Namespace, w.Name, peer.PodSelector)
						}
					}
				}
			}
		}
	}
}

func selector(t *testing.T, s *metav1.LabelSelector) labels.Selector {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

func find[T interface{ GetName() string }](t *testing.T, objs []object, name string) T {
	t.Helper()
	for _, o := range objs {
		if v, ok := o.obj.(T); ok && v.GetName() == name {
			return v
		}
	}
	var zero T
	t.Fatalf("no %T %s", zero, name)
	return zero
}

func container(t *testing.T, cs []corev1.Container, name string) *corev1.Container {
	t.Helper()
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	t.Fatalf("no container %s", name)
	return nil
}

// flagValue returns the value of --name=value in args.
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

func env(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func fieldRef(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return e.ValueFrom.FieldRef.FieldPath
		}
	}
	return ""
}

// mountOf returns the volume c has mounted at dir.
func mountOf(c *corev1.Container, dir string) string {
	for _, m := range c.VolumeMounts {
		if filepath.Clean(m.MountPath) == filepath.Clean(dir) {
			return m.Name
		}
	}
	return ""
}

func emptyDir(p corev1.PodSpec, volume string) *corev1.EmptyDirVolumeSource {
	for _, v := range p.Volumes {
		if v.Name == volume {
			return v.EmptyDir
		}
	}
	return nil
}
