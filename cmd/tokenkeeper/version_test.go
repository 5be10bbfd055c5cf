package main

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"testing"
)

func TestVersionNamesTheBuild(t *testing.T) {
	old := commit
	commit = "0123abc"
	t.Cleanup(func() { commit = old })
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"version"}, func(string) string { return "" }, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"tokenkeeper " + buildVersion(), "commit:   0123abc", "go:       go", runtime.GOOS + "/" + runtime.GOARCH} {
		if !strings.Contains(out, want) {
			t.Errorf("version output lacks %q:\n%s", want, out)
		}
	}
	if code := run(context.Background(), []string{"version", "extra"}, func(string) string { return "" }, &stdout, &stderr); code == 0 {
		t.Error("version with an argument: exit 0, want an error")
	}
}
