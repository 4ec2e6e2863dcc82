package kubernetes

import (
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
)

// docs/KUBERNETES.md applies only overlays these tests build, names every
// one of them, and creates the Secret with exactly the keys the manifests
// read from it, in each namespace (its YAML is checked by docs'
// TestSnippetsAreTestedFiles).
func TestDocsUseTestedManifests(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "KUBERNETES.md"))
	if err != nil {
		t.Fatal(err)
	}
	// One command per line: join the continued ones.
	doc := strings.ReplaceAll(string(b), "\\\n", " ")

	applied := map[string]bool{}
	for _, m := range regexp.MustCompile(`kubectl apply -k deploy/kubernetes/(\S+)`).FindAllStringSubmatch(doc, -1) {
		applied[m[1]] = true
		if !slices.Contains(overlays, m[1]) {
			t.Errorf("docs/KUBERNETES.md applies deploy/kubernetes/%s, which no test builds", m[1])
		}
	}
	for _, o := range overlays {
		if !applied[o] {
			t.Errorf("docs/KUBERNETES.md never applies %s", o)
		}
	}

	// The keys the doc's secrets get, by namespace.
	created := map[string][]string{}
	for _, line := range strings.Split(doc, "\n") {
		m := regexp.MustCompile(`kubectl -n (\S+) create secret generic workersd-etcd-passwords (.*)`).FindStringSubmatch(line)
		if m == nil {
			continue
		}
		for _, k := range regexp.MustCompile(`--from-literal=([a-z0-9-]+)=`).FindAllStringSubmatch(m[2], -1) {
			created[m[1]] = append(created[m[1]], k[1])
		}
	}
	// The keys the cluster overlay reads, by namespace.
	read := map[string]map[string]bool{}
	add := func(ns, key string) {
		if read[ns] == nil {
			read[ns] = map[string]bool{}
		}
		read[ns][key] = true
	}
	for _, o := range build(t, "overlays/cluster") {
		p, ok := podSpec(o.obj)
		if !ok {
			continue
		}
		for _, v := range p.Volumes {
			if v.Secret == nil || v.Secret.SecretName != "workersd-etcd-passwords" {
				continue
			}
			for _, it := range v.Secret.Items {
				add(o.namespace, it.Key)
			}
			if len(v.Secret.Items) == 0 {
				// The whole Secret: the setup job reads root's,
				// sdwriter's and each application user's password.
				job, ok := o.obj.(*batchv1.Job)
				if !ok {
					t.Fatalf("%s %s mounts the whole Secret", o.kind, o.name)
				}
				add(o.namespace, "root")
				add(o.namespace, "sdwriter")
				for _, app := range strings.Fields(env(&job.Spec.Template.Spec.Containers[0], "WORKERSD_APPS")) {
					user, _, _ := strings.Cut(app, "=")
					add(o.namespace, user)
				}
			}
		}
	}
	if len(read) == 0 {
		t.Fatal("the cluster overlay reads no password: the check is broken")
	}
	for ns, keys := range read {
		got := slices.Sorted(slices.Values(created[ns]))
		if want := slices.Sorted(maps.Keys(keys)); !slices.Equal(got, want) {
			t.Errorf("docs/KUBERNETES.md creates workersd-etcd-passwords in %s with %v, the manifests read %v", ns, got, want)
		}
	}
	for ns := range created {
		if read[ns] == nil {
			t.Errorf("docs/KUBERNETES.md creates a Secret in %s, which nothing reads", ns)
		}
	}
}
