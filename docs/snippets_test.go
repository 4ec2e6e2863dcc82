// Package docs holds the project's documentation; its test keeps the code
// the documents show true: every snippet of a client recipe (Python, Ruby,
// JavaScript, uWSGI's ini, Go) is an excerpt of a file that a test runs.
package docs

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// checked are the fence languages whose blocks must be excerpts; shell
// commands, JSON answers and PromQL are shown, not run as files.
var checked = map[string]bool{"python": true, "ruby": true, "js": true, "javascript": true, "ini": true, "go": true}

// checkedIn are more fence languages checked in one document: the
// Kubernetes page's YAML is the manifests deploy/kubernetes' tests check.
var checkedIn = map[string]map[string]bool{"docs/KUBERNETES.md": {"yaml": true}}

var marker = regexp.MustCompile(`^<!-- snippet: (\S+) -->$`)

type snippet struct {
	doc  string
	line int
	lang string
	file string // from the marker, relative to the repository's root
	body []string
}

// TestSnippetsAreTestedFiles: each such block is preceded by
// <!-- snippet: path --> and appears in that file line for line (the whole
// block indented alike is fine: a function's body), and the file is in a
// directory whose test runs it (a _test.go beside it or above it, up to
// examples/<name> or clients/<name>).
func TestSnippetsAreTestedFiles(t *testing.T) {
	root := ".."
	out, err := exec.Command("git", "-C", root, "ls-files", "*.md").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	var all []snippet
	for _, doc := range strings.Fields(string(out)) {
		all = append(all, snippets(t, root, doc)...)
	}
	if len(all) < 5 {
		t.Fatalf("only %d snippets found: the scan is broken", len(all))
	}
	for _, s := range all {
		if s.file == "" {
			t.Errorf("%s:%d: a %s block without <!-- snippet: path --> before it", s.doc, s.line, s.lang)
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, s.file))
		if err != nil {
			t.Errorf("%s:%d: %v", s.doc, s.line, err)
			continue
		}
		if !excerpt(strings.Split(string(b), "\n"), s.body) {
			t.Errorf("%s:%d: the block is not in %s as it stands:\n%s", s.doc, s.line, s.file, strings.Join(s.body, "\n"))
		}
		if !tested(root, s.file) {
			t.Errorf("%s:%d: no test runs %s (no _test.go beside it)", s.doc, s.line, s.file)
		}
	}
	t.Logf("%d snippets checked", len(all))
}

func snippets(t *testing.T, root, doc string) []snippet {
	f, err := os.Open(filepath.Join(root, doc))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []snippet
	var cur *snippet
	pending, n := "", 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case cur != nil && strings.TrimSpace(line) == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.body = append(cur.body, line)
		case strings.HasPrefix(line, "```"):
			lang := strings.TrimPrefix(line, "```")
			if checked[lang] || checkedIn[doc][lang] {
				cur = &snippet{doc: doc, line: n, lang: lang, file: pending}
			} else if lang != "" {
				// An unchecked block: skip to its end.
				for sc.Scan() {
					n++
					if strings.TrimSpace(sc.Text()) == "```" {
						break
					}
				}
			}
			pending = ""
		default:
			if m := marker.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
				pending = m[1]
			} else if strings.TrimSpace(line) != "" {
				pending = ""
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// excerpt reports whether block appears in lines, every line with the
// same extra indentation (blank lines blank).
func excerpt(lines, block []string) bool {
	if len(block) == 0 {
		return false
	}
	for k := 0; k+len(block) <= len(lines); k++ {
		first := strings.TrimRight(lines[k], " \t")
		if !strings.HasSuffix(first, block[0]) {
			continue
		}
		indent := strings.TrimSuffix(first, block[0])
		if strings.TrimSpace(indent) != "" {
			continue
		}
		ok := true
		for i, b := range block {
			l := strings.TrimRight(lines[k+i], " \t")
			if b == "" && l == "" {
				continue
			}
			if l != indent+strings.TrimRight(b, " \t") {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// tested reports whether a _test.go file sits in file's directory or one
// above it, below the repository's root.
func tested(root, file string) bool {
	for dir := filepath.Dir(file); dir != "." && dir != "/"; dir = filepath.Dir(dir) {
		if m, _ := filepath.Glob(filepath.Join(root, dir, "*_test.go")); len(m) > 0 {
			return true
		}
	}
	return false
}
