package docs

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/workersd/workersd/promcheck"
)

// TestEveryCheckIsDocumented: each finding ID has its section in
// CHECKS.md, "## <id>" (alerts link CHECKS.md#<id>), which opens with its
// severity, and its row in the table of findings; and the document names
// no ID that promcheck does not have.
func TestEveryCheckIsDocumented(t *testing.T) {
	b, err := os.ReadFile("CHECKS.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	ids := map[string]bool{}
	for _, c := range promcheck.IDs {
		ids[c.ID] = true
		sev := strings.ToUpper(string(c.Severity[:1])) + string(c.Severity[1:])
		section := regexp.MustCompile(`(?m)^## ` + regexp.QuoteMeta(c.ID) + "\n\n\\*\\*" + sev + `\.\*\*`)
		if !section.MatchString(doc) {
			t.Errorf("CHECKS.md has no section \"## %s\" opening with **%s.**", c.ID, sev)
		}
		row := "| [`" + c.ID + "`](#" + c.ID + ") | " + string(c.Severity) + " |"
		if !strings.Contains(doc, row) {
			t.Errorf("CHECKS.md's table of findings has no row %q", row)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^## ([a-z0-9]+_[a-z0-9_]+)$`).FindAllStringSubmatch(doc, -1) {
		if !ids[m[1]] {
			t.Errorf("CHECKS.md has a section for %s, which is no finding ID of promcheck", m[1])
		}
	}
}
