package tokenkeeper_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/tokenkeeper/tokenkeeper"

// importRule is one row of the package table of docs/architecture.md.
type importRule struct {
	any     bool     // "all"
	allowed []string // import paths of this module
	line    int
}

// backticked finds `names`.
var backticked = regexp.MustCompile("`([^`]+)`")

// parenthesized finds what stands in parentheses: notes, not rules.
var parenthesized = regexp.MustCompile(`\([^)]*\)`)

// importRules reads the package table of docs/architecture.md: the first
// column names a package ("`tokenkeeper` (root)" for the module's root),
// the last what of this module it may import.
func importRules(t *testing.T) map[string]importRule {
	t.Helper()
	f, err := os.Open("docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rules := make(map[string]importRule)
	in := false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "| package | owns | may import"):
			in = true
			continue
		case in && !strings.HasPrefix(line, "|"):
			in = false
		}
		if !in || strings.HasPrefix(line, "|---") {
			continue
		}
		cols := strings.Split(strings.Trim(line, "|"), "|")
		if len(cols) != 3 {
			t.Fatalf("docs/architecture.md:%d: a row of the package table has %d columns, not 3", n, len(cols))
		}
		var r importRule
		r.line = n
		last := strings.TrimSpace(parenthesized.ReplaceAllString(cols[2], ""))
		switch last {
		case "all":
			r.any = true
		case "nothing":
		default:
			for _, m := range backticked.FindAllStringSubmatch(last, -1) {
				r.allowed = append(r.allowed, pathOf(m[1]))
			}
			if len(r.allowed) == 0 {
				t.Fatalf("docs/architecture.md:%d: %q names no package (write `pkg`, nothing or all)", n, cols[2])
			}
		}
		for _, m := range backticked.FindAllStringSubmatch(parenthesized.ReplaceAllString(cols[0], ""), -1) {
			rules[pathOf(m[1])] = r
		}
	}
	if len(rules) == 0 {
		t.Fatal("docs/architecture.md: no package table found")
	}
	return rules
}

// pathOf is the import path of a package as the table names it.
func pathOf(name string) string {
	if name == "tokenkeeper" {
		return module
	}
	return module + "/" + name
}

// listedPackage is a package as go list describes it.
type listedPackage struct {
	ImportPath string
	Imports    []string
}

// importViolations returns what breaks rules in pkgs: a forbidden import,
// a package the table lacks, a row naming no package.
func importViolations(rules map[string]importRule, pkgs []listedPackage) []string {
	var bad []string
	seen := make(map[string]bool)
	for _, p := range pkgs {
		seen[p.ImportPath] = true
		r, ok := rules[p.ImportPath]
		if !ok {
			bad = append(bad, p.ImportPath+" is not in the package table of docs/architecture.md: add its row, with what it may import")
			continue
		}
		if r.any {
			continue
		}
		for _, imp := range p.Imports {
			if (imp == module || strings.HasPrefix(imp, module+"/")) && !slices.Contains(r.allowed, imp) {
				bad = append(bad, fmt.Sprintf("%s imports %s, which docs/architecture.md:%d does not allow it", p.ImportPath, imp, r.line))
			}
		}
	}
	for path, r := range rules {
		if !seen[path] {
			bad = append(bad, fmt.Sprintf("docs/architecture.md:%d names %s, which is no package of the module", r.line, path))
		}
	}
	slices.Sort(bad)
	return bad
}

// The rules of docs/architecture.md hold: no package of the module imports
// one of the module the table does not allow it, and every package is in
// the table. Only a package's own code counts, not its tests.
func TestImportRules(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list the packages: %v", err)
	}
	var out, stderr bytes.Buffer
	cmd := exec.Command(gobin, "list", "-json=ImportPath,Imports", "./...")
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go list: %v: %s", err, stderr.String())
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(&out)
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found %d packages: %+v", len(pkgs), pkgs)
	}
	for _, v := range importViolations(importRules(t), pkgs) {
		t.Error(v)
	}
}

// The checker fails on a forbidden import, an unlisted package and a row
// naming no package.
func TestImportRulesCatchViolations(t *testing.T) {
	rules := map[string]importRule{
		module:            {allowed: []string{module + "/cache"}, line: 1},
		module + "/cache": {line: 2},
		module + "/gone":  {line: 3},
		module + "/cmd/x": {any: true, line: 4},
	}
	got := importViolations(rules, []listedPackage{
		{module, []string{"context", module + "/cache"}},
		{module + "/cache", []string{module + "/refresher", "github.com/redis/go-redis/v9"}},
		{module + "/cmd/x", []string{module, module + "/refresher"}},
		{module + "/refresher", nil},
	})
	want := []string{
		module + "/cache imports " + module + "/refresher, which docs/architecture.md:2 does not allow it",
		module + "/refresher is not in the package table of docs/architecture.md: add its row, with what it may import",
		"docs/architecture.md:3 names " + module + "/gone, which is no package of the module",
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("violations:\n got %q\nwant %q", got, want)
	}
}
