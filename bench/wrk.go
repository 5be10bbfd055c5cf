package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// wrkResult is what one wrk run measured.
type wrkResult struct {
	Requests   int64
	Duration   time.Duration
	RPS        float64
	P50, P99   time.Duration
	Non2xx     int64
	SockErrors string // wrk's "Socket errors" line, empty when none
}

// runWrk loads url with conns keep-alive connections for d (in whole
// seconds, at least one: wrk takes no less), sending the header, and
// parses wrk's --latency report. wrk runs one thread: on a machine of two
// cores, the other is the server's.
func runWrk(ctx context.Context, url string, conns int, d time.Duration, header string) (wrkResult, error) {
	threads := 1
	args := []string{
		"-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-d", fmt.Sprintf("%ds", max(int(d.Round(time.Second)/time.Second), 1)), "--latency", "--timeout", "5s",
	}
	if header != "" {
		args = append(args, "-H", header)
	}
	args = append(args, url)
	cmd := exec.CommandContext(ctx, "wrk", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	r, err := parseWrk(string(out))
	if err != nil {
		return r, fmt.Errorf("wrk output: %w\n%s", err, out)
	}
	if r.Non2xx > 0 {
		return r, fmt.Errorf("wrk against %s: %d answers were not 2xx", url, r.Non2xx)
	}
	return r, nil
}

var (
	wrkTotal   = regexp.MustCompile(`(\d+) requests in ([\d.]+)(us|ms|s|m),`)
	wrkRPS     = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkPct     = regexp.MustCompile(`^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkSockErr = regexp.MustCompile(`Socket errors:.*`)
)

// parseWrk reads a wrk --latency report.
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := wrkTotal.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no request total")
	}
	r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	r.Duration = wrkDuration(m[2], m[3])
	m = wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec")
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	for line := range strings.SplitSeq(out, "\n") {
		if m := wrkPct.FindStringSubmatch(line); m != nil {
			d := wrkDuration(m[2], m[3])
			if m[1] == "50" {
				r.P50 = d
			} else {
				r.P99 = d
			}
		}
	}
	if r.P50 == 0 || r.P99 == 0 {
		return r, fmt.Errorf("no latency distribution (was --latency given?)")
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		r.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	r.SockErrors = wrkSockErr.FindString(out)
	return r, nil
}

func wrkDuration(v, unit string) time.Duration {
	f, _ := strconv.ParseFloat(v, 64)
	switch unit {
	case "us":
		return time.Duration(f * float64(time.Microsecond))
	case "ms":
		return time.Duration(f * float64(time.Millisecond))
	case "m":
		return time.Duration(f * float64(time.Minute))
	default:
		return time.Duration(f * float64(time.Second))
	}
}
