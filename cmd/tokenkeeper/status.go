package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// statusEnvs are the settings of `tokenkeeper status`: those of serve that
// reach Redis.
var statusEnvs = []string{"TOKENKEEPER_REDIS_URL", "TOKENKEEPER_REDIS_TLS_CA", "TOKENKEEPER_REDIS_TLS_CERT", "TOKENKEEPER_REDIS_TLS_KEY"}

// fleetJSON is what `tokenkeeper status --json` prints: the fields of
// GET /v1/status that Redis knows, in the same shapes.
type fleetJSON struct {
	Leader      string            `json:"leader"`
	Replicas    []httpapi.Replica `json:"replicas"`
	Refreshes   []httpapi.Refresh `json:"refreshes"`
	GeneratedAt time.Time         `json:"generated_at"`
}

// runStatus prints the fleet view from Redis: the leader, the replicas
// whose heartbeat is fresh, and the last refresh attempts, as tables or
// with --json as JSON. It reads what the replicas wrote and needs none of
// them to answer.
func runStatus(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	asJSON := false
	timeout := 5 * time.Second
	rest := args[:0:0]
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--json" || a == "-json":
			asJSON = true
		case strings.HasPrefix(a, "--timeout=") || strings.HasPrefix(a, "-timeout="):
			d, err := time.ParseDuration(a[strings.Index(a, "=")+1:])
			if err != nil || d <= 0 {
				return fmt.Errorf("status: --timeout: %q is not a positive duration", a)
			}
			timeout = d
		default:
			rest = append(rest, a)
		}
	}
	var settings []setting
	for _, s := range serveSettings {
		if slices.Contains(statusEnvs, s.env) {
			settings = append(settings, s)
		}
	}
	v, err := load("status", settings, rest, getenv, os.ReadFile, stderr)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stderr, "\n  --json\n      print JSON instead of tables\n  --timeout=5s\n      give up after this long\n")
		return nil
	}
	if err != nil {
		return err
	}
	u := v.str("TOKENKEEPER_REDIS_URL")
	if u == "" {
		return errors.New("status: TOKENKEEPER_REDIS_URL is required (or --redis-url)")
	}
	opt, err := redis.ParseURL(u)
	if err != nil {
		// The URL is not echoed: it may carry a password.
		return errors.New("status: TOKENKEEPER_REDIS_URL: not a valid redis:// or rediss:// URL")
	}
	redisTLS(v, opt, os.ReadFile)
	if err := v.err(); err != nil {
		return configError(err)
	}
	opt.MaxRetries = 1
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	f, err := refresher.ReadFleet(ctx, rdb, cache.KeysFor("liveness"))
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	now := time.Now()
	if asJSON {
		replicas, refreshes := tokenkeeper.APIFleet(f)
		out := fleetJSON{Leader: f.Leader, Replicas: replicas, Refreshes: refreshes, GeneratedAt: utcMillis(now)}
		for i := range out.Replicas {
			r := &out.Replicas[i]
			r.ExpiresAt, r.LastEventAt, r.SeenAt = utcMillis(r.ExpiresAt), utcMillis(r.LastEventAt), utcMillis(r.SeenAt)
		}
		for i := range out.Refreshes {
			r := &out.Refreshes[i]
			r.At, r.ExpiresAt = utcMillis(r.At), utcMillis(r.ExpiresAt)
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	printFleet(stdout, f, now)
	return nil
}

// printFleet writes the fleet view as tables, with times as durations from
// now.
func printFleet(w io.Writer, f refresher.Fleet, now time.Time) {
	ready := 0
	for _, r := range f.Replicas {
		if r.Ready {
			ready++
		}
	}
	leader := f.Leader
	if leader == "" {
		leader = "NONE: no replica holds the lock"
	}
	fmt.Fprintf(w, "leader:    %s\nreplicas:  %d alive, %d ready\n\n", leader, len(f.Replicas), ready)

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tREADY\tROLE\tTOKEN\tEXPIRES IN\tLAST EVENT\tHEARTBEAT\tUPSTREAM\tVERSION\tPROBLEM")
	for _, r := range f.Replicas {
		role := "follower"
		if r.Leader {
			role = "leader"
		}
		token, expires := "none", "-"
		if r.Fingerprint != "" {
			token, expires = r.Fingerprint, short(r.ExpiresAt.Sub(now))
		}
		event := "none yet"
		if r.LastEventType != "" {
			event = r.LastEventType + ", " + short(now.Sub(r.LastEvent)) + " ago"
		}
		if r.AsideFor > 0 {
			role = "aside " + short(r.AsideFor)
		}
		upstream := dash(r.Upstream)
		if r.UpstreamError != "" {
			upstream += " (" + r.UpstreamError + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s ago\t%s\t%s\t%s\n", r.Instance, yesNo(r.Ready), role, token, expires,
			event, short(now.Sub(r.Seen)), upstream, dash(r.Version), dash(r.Problem))
	}
	tw.Flush()
	if len(f.Replicas) == 0 {
		fmt.Fprintln(w, "(no heartbeat in Redis: no replica is running, or they cannot reach Redis)")
	}

	fmt.Fprintln(w, "\nlast refreshes (newest first):")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WHEN\tLEADER\tOUTCOME\tUPSTREAM\tTOTAL\tTOKEN\tERROR")
	for _, a := range f.Refreshes {
		up := "-"
		if a.Upstream > 0 {
			up = short(a.Upstream)
		}
		fmt.Fprintf(tw, "%s ago\t%s\t%s\t%s\t%s\t%s\t%s\n", short(now.Sub(a.At)), a.By, a.Outcome, up, short(a.Took),
			dash(a.Fingerprint), dash(a.Error))
	}
	tw.Flush()
	if len(f.Refreshes) == 0 {
		fmt.Fprintln(w, "(none recorded in the last 24 hours)")
	}
}

// short rounds d for people: milliseconds under a second, else seconds.
func short(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + short(-d)
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}

// utcMillis is t in UTC to the millisecond; zero stays zero.
func utcMillis(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC().Truncate(time.Millisecond)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
