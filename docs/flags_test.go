package docs

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/buildtest"
)

// flagTables are where each command's flags are documented: the tables
// (rows "| `--flag` | default | ... |") directly under a heading, up to
// the next heading. A complete table lists every flag of the command; the
// others list some, and are checked as far as they go.
var flagTables = []struct {
	cmd      []string // binary and subcommand
	doc      string   // relative to docs/
	heading  string
	complete bool
}{
	{[]string{"sdwriter"}, "../README.md", "### sdwriter's flags", true},
	{[]string{"sdwriter"}, "CHECKS.md", "## Turning it on", false},
	{[]string{"sdwriter", "check"}, "CHECKS.md", "## `sdwriter check`, for deploy pipelines", true},
	{[]string{"workersd-agent"}, "AGENT.md", "## Running it", true},
	{[]string{"workersd-agent", "list"}, "AGENT.md", "## Which workers does it hold?", true},
}

// kingpinOwn are the flags kingpin gives every command; not documented.
var kingpinOwn = map[string]bool{"help": true, "version": true}

// linuxOnly are flags that exist only in Linux builds (exporter-toolkit's).
var linuxOnly = map[string]bool{"web.systemd-socket": true}

// TestFlagsAreDocumented: every flag of sdwriter, sdwriter check,
// workersd-agent and workersd-agent list, as its --help prints it
// (kingpin's model of the flags, exporter-toolkit's --web.* included), has
// a row in its command's table with the same default; every row names a
// flag the command has, with the default it has. Kingpin's --help hides
// two defaults: a boolean's (the table must say false, the default of
// every boolean flag here) and one behind a PlaceHolder (the table must
// give none).
func TestFlagsAreDocumented(t *testing.T) {
	bin := t.TempDir()
	if err := buildtest.Build(bin, "./cmd/sdwriter", "./cmd/workersd-agent"); err != nil {
		t.Fatal(err)
	}
	helps := map[string]map[string]helpFlag{}
	for _, ft := range flagTables {
		name := strings.Join(ft.cmd, " ")
		if helps[name] == nil {
			helps[name] = commandFlags(t, filepath.Join(bin, ft.cmd[0]), ft.cmd[1:])
		}
		flags := helps[name]
		rows, err := flagRows(ft.doc, ft.heading)
		if err != nil {
			t.Error(err)
			continue
		}
		where := fmt.Sprintf("%s's table under %q", filepath.ToSlash(filepath.Join("docs", ft.doc)), ft.heading)
		for _, r := range rows {
			if r.err != "" {
				t.Errorf("%s, line %d: %s", where, r.line, r.err)
				continue
			}
			f, ok := flags[r.flag]
			if !ok {
				if !linuxOnly[r.flag] || runtime.GOOS == "linux" {
					t.Errorf("%s, line %d, lists --%s, which %s does not have (its --help): remove the row or fix its name", where, r.line, r.flag, name)
				}
				continue
			}
			if msg := f.differs(r.def); msg != "" {
				t.Errorf("%s, line %d, gives --%s the default %s; %s: fix the table (or the flag, if the table is right)", where, r.line, r.flag, r.describe(), msg)
			}
		}
		if !ft.complete {
			continue
		}
		listed := map[string]int{}
		for _, r := range rows {
			if r.err == "" {
				listed[r.flag]++
			}
		}
		for _, f := range sortedFlags(flags) {
			switch n := listed[f.name]; {
			case n == 0:
				t.Errorf("%s has --%s (default %s), which %s does not list: add a row | `--%s` | %s | what it does |", name, f.name, f.describe(), where, f.name, f.docDefault())
			case n > 1:
				t.Errorf("%s lists --%s %d times", where, f.name, n)
			}
		}
		t.Logf("%s: %d flags checked against %s", name, len(flags), where)
	}
}

// helpFlag is a flag as kingpin's --help shows it.
type helpFlag struct {
	name string
	bool bool   // a boolean: --help does not show its default
	def  string // "" when it has none or --help does not show it
}

// differs says how documented (the row's defaults, nil for none) differs
// from the flag's default, "" when it does not.
func (f helpFlag) differs(documented *string) string {
	doc := ""
	if documented != nil {
		doc = *documented
	}
	if f.bool {
		if doc != "false" {
			return "a boolean flag defaults to false (kingpin's --help does not show it): the table must say false"
		}
		return ""
	}
	if sameDefault(doc, f.def) {
		return ""
	}
	return "--help says " + f.describe()
}

func (f helpFlag) describe() string {
	switch {
	case f.bool:
		return "false"
	case f.def == "":
		return "none"
	}
	return "`" + f.def + "`"
}

// docDefault is what a new row's default column should say.
func (f helpFlag) docDefault() string {
	if f.bool {
		return "false"
	}
	if f.def == "" {
		return ""
	}
	return "`" + f.def + "`"
}

// sameDefault compares a documented default with --help's: as durations
// when both are (`1m` is kingpin's 1m0s), else as strings.
func sameDefault(doc, help string) bool {
	if doc == help {
		return true
	}
	d1, err1 := time.ParseDuration(doc)
	d2, err2 := time.ParseDuration(help)
	return err1 == nil && err2 == nil && d1 == d2
}

// flagLine is a flag's line in kingpin's --help: "  -h, --[no-]help",
// "      --name=PLACEHOLDER ..." (every command here has -h, so the others
// are indented by six; descriptions are indented further).
var flagLine = regexp.MustCompile(`^  (?:-\w, |    )?--(\[no-\])?([A-Za-z0-9][A-Za-z0-9._-]*)(.*)$`)

// placeholder is a PlaceHolder or kingpin's upper-cased name: no default.
var placeholder = regexp.MustCompile(`^[A-Z][A-Z0-9_.-]*$`)

// commandFlags runs bin args... --help and returns the flags it lists.
func commandFlags(t *testing.T, bin string, args []string) map[string]helpFlag {
	t.Helper()
	cmd := exec.Command(bin, append(append([]string{}, args...), "--help")...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s --help: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	flags := map[string]helpFlag{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		m := flagLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		f := helpFlag{name: m[2], bool: m[1] != ""}
		if rest := m[3]; !f.bool && strings.HasPrefix(rest, "=") {
			v := rest[1:]
			if strings.HasPrefix(v, `"`) {
				q, err := strconv.QuotedPrefix(v)
				if err != nil {
					t.Fatalf("%s --help: cannot read the default of --%s: %q", bin, f.name, sc.Text())
				}
				f.def, _ = strconv.Unquote(q)
			} else if tok, _, _ := strings.Cut(v, " "); !placeholder.MatchString(tok) {
				f.def = tok
			}
		}
		if kingpinOwn[f.name] {
			continue
		}
		if _, dup := flags[f.name]; dup {
			t.Fatalf("%s --help lists --%s twice", bin, f.name)
		}
		flags[f.name] = f
	}
	if len(flags) == 0 {
		t.Fatalf("%s %s --help lists no flag:\n%s", filepath.Base(bin), strings.Join(args, " "), out)
	}
	return flags
}

// sortedFlags are m's flags by name, for messages in a stable order.
func sortedFlags(m map[string]helpFlag) []helpFlag {
	var fs []helpFlag
	for _, f := range m {
		fs = append(fs, f)
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].name < fs[j].name })
	return fs
}

// flagRow is one flag of a table row.
type flagRow struct {
	line int
	flag string
	def  *string // nil: the row gives no default
	err  string  // the row cannot be read
}

func (r flagRow) describe() string {
	if r.def == nil {
		return "none"
	}
	return "`" + *r.def + "`"
}

var (
	rowFlag    = regexp.MustCompile("`--([A-Za-z0-9][A-Za-z0-9._-]*)`")
	rowDefault = regexp.MustCompile("`([^`]*)`")
)

// flagRows reads the flag rows of the tables directly under heading in
// doc: "| `--a`, `--b` | `x`, `y` | ... |" gives each flag its default,
// "| `--a` | | ... |" or prose without backticks gives none, and a
// boolean's "false" may be written plain.
func flagRows(doc, heading string) ([]flagRow, error) {
	b, err := os.ReadFile(doc)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(string(b), "\n")
	start := -1
	for i, l := range lines {
		if l == heading {
			start = i
			break
		}
	}
	if start < 0 {
		return nil, fmt.Errorf("%s has no heading %q, whose table lists flags: restore it, or change flagTables in docs/flags_test.go", doc, heading)
	}
	var rows []flagRow
	fenced := false // in a code block, whose "# ..." lines are no headings
	for i := start + 1; i < len(lines); i++ {
		l := lines[i]
		if strings.HasPrefix(l, "```") {
			fenced = !fenced
		}
		if !fenced && strings.HasPrefix(l, "#") {
			break
		}
		if fenced || !strings.HasPrefix(l, "| `--") {
			continue
		}
		cells := strings.Split(l, "|")
		if len(cells) < 4 {
			rows = append(rows, flagRow{line: i + 1, err: "a flag row needs the columns flag, default, meaning"})
			continue
		}
		var names []string
		for _, m := range rowFlag.FindAllStringSubmatch(cells[1], -1) {
			names = append(names, m[1])
		}
		var defs []string
		for _, m := range rowDefault.FindAllStringSubmatch(cells[2], -1) {
			defs = append(defs, m[1])
		}
		if len(defs) == 0 && strings.TrimSpace(cells[2]) == "false" {
			defs = []string{"false"}
		}
		if len(defs) != 0 && len(defs) != len(names) {
			rows = append(rows, flagRow{line: i + 1, err: fmt.Sprintf("%d flags but %d defaults: give one each, or none", len(names), len(defs))})
			continue
		}
		for k, n := range names {
			r := flagRow{line: i + 1, flag: n}
			if len(defs) > 0 {
				r.def = &defs[k]
			}
			rows = append(rows, r)
		}
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("%s lists no flag under %q: its table must come before the next heading", doc, heading)
	}
	return rows, nil
}
