package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
)

// allocsResult is figure 8: httpapi's BenchmarkTokenRead, in process.
type allocsResult struct {
	TKAllocs, StaticAllocs float64
	TKNs, StaticNs         float64
	TKBytes                float64
}

var benchLine = regexp.MustCompile(`^BenchmarkTokenRead/(\S+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op\s+([\d.]+) B/op\s+([\d.]+) allocs/op`)

// measureAllocs runs `go test -bench BenchmarkTokenRead -benchmem
// ./httpapi/` on the in-process sub-benchmarks: the token read through
// the whole handler, and the static echo handler next to it.
func measureAllocs(ctx context.Context, root, benchtime string) (*allocsResult, error) {
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$",
		"-bench", "^BenchmarkTokenRead$/^(httpapi|static-echo)$", "-benchmem", "-benchtime", benchtime, "./httpapi/")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go test -bench: %w\n%s", err, out)
	}
	res := &allocsResult{TKAllocs: -1, StaticAllocs: -1}
	for _, line := range splitLines(string(out)) {
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		ns, _ := strconv.ParseFloat(m[2], 64)
		bytes, _ := strconv.ParseFloat(m[3], 64)
		allocs, _ := strconv.ParseFloat(m[4], 64)
		switch m[1] {
		case "httpapi":
			res.TKAllocs, res.TKNs, res.TKBytes = allocs, ns, bytes
		case "static-echo":
			res.StaticAllocs, res.StaticNs = allocs, ns
		}
	}
	if res.TKAllocs < 0 || res.StaticAllocs < 0 {
		return nil, fmt.Errorf("go test -bench: no result for BenchmarkTokenRead/httpapi and /static-echo:\n%s", out)
	}
	return res, nil
}
