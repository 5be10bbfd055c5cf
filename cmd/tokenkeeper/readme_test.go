package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/tokenkeeper/tokenkeeper/internal/catalog"
)

// readmeCatalog is the README's example catalog: its first yaml block
// that starts with tokens: (as .ci/run finds it).
func readmeCatalog(t *testing.T) []byte {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile("(?ms)^```yaml\n(.*?)^```$").FindAllSubmatch(readme, -1) {
		if strings.HasPrefix(string(m[1]), "tokens:") {
			return m[1]
		}
	}
	t.Fatal("README.md has no example catalog (a yaml block starting with tokens:)")
	return nil
}

// fieldPaths lists the field paths of a YAML document (tokens.rdp.base_url),
// list items taken as their list, a secret's FIELD_file as FIELD.
func fieldPaths(t *testing.T, doc []byte) []string {
	t.Helper()
	var root yaml.Node
	if err := yaml.Unmarshal(doc, &root); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode, yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := strings.TrimPrefix(path+"."+strings.TrimSuffix(n.Content[i].Value, "_file"), ".")
				if !slices.Contains(out, p) {
					out = append(out, p)
				}
				walk(n.Content[i+1], p)
			}
		}
	}
	walk(&root, "")
	return out
}

// TestReadmeCatalogExample: the README's example catalog is valid and
// shows every field the repository's own catalogs use, and the fleet-wide
// sign-on cap and the upstream's address of an RDP token.
func TestReadmeCatalogExample(t *testing.T) {
	example := readmeCatalog(t)
	if _, err := catalog.Parse(example, catalog.Options{File: "README.md", Offline: true}); err != nil {
		t.Fatalf("the README's example catalog: %v", err)
	}
	shown := fieldPaths(t, example)
	want := []string{"tokens.auth_per_minute", "tokens.rdp.base_url"}
	files, _ := filepath.Glob("../../deploy/catalog/*.yaml")
	if len(files) == 0 {
		t.Fatal("no catalog under deploy/catalog")
	}
	for _, f := range files {
		doc, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, fieldPaths(t, doc)...)
	}
	for _, p := range want {
		if !slices.Contains(shown, p) {
			t.Errorf("the README's example catalog does not show %s", p)
		}
	}
}
