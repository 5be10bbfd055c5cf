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
	"go.yaml.in/yaml/v3"

	"github.com/tokenkeeper/tokenkeeper"
)

// statusEnvs are the settings of `tokenkeeper status`: those of serve that
// reach Redis, and the catalog file, for the names of its tokens.
var statusEnvs = []string{"TOKENKEEPER_CONFIG", "TOKENKEEPER_REDIS_URL", "TOKENKEEPER_REDIS_MODE", "TOKENKEEPER_REDIS_TLS_CA", "TOKENKEEPER_REDIS_TLS_CERT", "TOKENKEEPER_REDIS_TLS_KEY"}

// statusRefreshRows is how many refresh attempts the tables show for each
// token when there are several; --json shows them all.
const statusRefreshRows = 5

// tokenView is one token as Redis records it (tokenkeeper.ReadStatus), or
// why it could not be read.
type tokenView struct {
	name string
	st   tokenkeeper.Status
	err  error
}

// runStatus prints the fleet view from Redis: the leader, the replicas
// whose heartbeat is fresh, and the last refresh attempts, as tables or
// with --json as JSON. It reads what the replicas wrote and needs none of
// them to answer.
//
// Without a catalog it shows the liveness token, as before the catalog.
// With TOKENKEEPER_CONFIG (--config) it shows every token of the file, and
// with --token NAME (repeatable) the tokens named, each under a header
// line. The names come from the file or the flags: status never lists
// Redis's keys.
func runStatus(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	asJSON := false
	timeout := 5 * time.Second
	var names []string
	rest := args[:0:0]
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--json" || a == "-json":
			asJSON = true
		case a == "--token" || a == "-token":
			if i+1 == len(args) {
				return errors.New("status: --token needs a token name")
			}
			i++
			names = append(names, args[i])
		case strings.HasPrefix(a, "--token=") || strings.HasPrefix(a, "-token="):
			names = append(names, a[strings.Index(a, "=")+1:])
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
		fmt.Fprint(stderr, "\n  --json\n      print JSON instead of tables\n  --timeout=5s\n      give up after this long\n"+
			"  --token NAME\n      show this token (repeat for several; instead of the tokens of TOKENKEEPER_CONFIG)\n")
		return nil
	}
	if err != nil {
		return err
	}
	if v.str("TOKENKEEPER_REDIS_URL") == "" {
		return errors.New("status: TOKENKEEPER_REDIS_URL is required (or --redis-url)")
	}
	rc := Config{LockTTL: timeout}
	parseRedis(v, &rc, os.ReadFile)
	// The front door's rule of the mode (serve applies all of them).
	checkRules(v, Config{RedisMode: rc.RedisMode, AllowAnonymous: true}, 0)
	if err := v.err(); err != nil {
		return configError(err)
	}
	catalogMode := len(names) > 0
	if catalogMode {
		if names, err = checkTokenNames(names); err != nil {
			return err
		}
	} else if path := v.str("TOKENKEEPER_CONFIG"); path != "" {
		if names, err = catalogNames(path, getenv, os.ReadFile, stderr); err != nil {
			return err
		}
		catalogMode = true
	}
	rdb := rc.newRedis(1)
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if catalogMode {
		return statusTokens(ctx, rdb, names, asJSON, stdout)
	}
	st, err := tokenkeeper.ReadStatus(ctx, rdb, tokenkeeper.Name)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	now := time.Now()
	if asJSON {
		out := fleetJSON{Leader: st.Leader, GeneratedAt: utcMillis(now)}
		out.Replicas, out.Refreshes = fleetOf(st)
		return writeJSON(stdout, out)
	}
	printFleet(stdout, st, now)
	return nil
}

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// checkTokenNames refuses names no token may have (which could also reach
// other keys than a token's) and drops repeated ones.
func checkTokenNames(names []string) ([]string, error) {
	var out []string
	for _, n := range names {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if err := checkNames(out); err != nil {
		var fe *tokenkeeper.FieldError
		if errors.As(err, &fe) {
			return nil, fmt.Errorf("status: --token: %s", fe.Problem)
		}
		return nil, fmt.Errorf("status: --token: %w", err)
	}
	return out, nil
}

// checkNames checks token names as the front door checks a catalog's:
// each valid, none twice.
func checkNames(names []string) error {
	cfg := tokenkeeper.Config{HTTP: tokenkeeper.HTTPConfig{AllowAnonymous: true}}
	for _, n := range names {
		cfg.Tokens = append(cfg.Tokens, tokenkeeper.TokenConfig{Name: n})
	}
	return cfg.Validate()
}

// catalogNames returns the names of the tokens of the catalog file at
// path. status needs nothing else of the file, so a file that does not
// resolve here (an operator's machine lacks the replicas' secrets and
// their files, most often) still gives its names: they are read from the
// file's tokens alone, with a note on stderr. Only a file that cannot be
// read, or whose token names cannot be made out, is an error.
func catalogNames(path string, getenv func(string) string, readFile func(string) ([]byte, error), stderr io.Writer) ([]string, error) {
	cat, err := loadCatalog(path, getenv, readFile, nil)
	if err == nil {
		names := make([]string, 0, len(cat.Tokens))
		for _, t := range cat.Tokens {
			names = append(names, t.Name)
		}
		return names, nil
	}
	data, rerr := readFile(path)
	if rerr != nil {
		return nil, fmt.Errorf("status: TOKENKEEPER_CONFIG: %w", rerr) // the file itself cannot be read
	}
	names, ok := tokenNames(data)
	if !ok {
		return nil, fmt.Errorf("status: %s is not valid:\n%w", path, err)
	}
	problems := 1
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		problems = len(j.Unwrap())
	}
	fmt.Fprintf(stderr, "tokenkeeper status: note: %s does not resolve on this machine (%d problems, such as secrets absent here; "+
		"'tokenkeeper config check %s' lists them); showing the %d tokens it names\n", path, problems, path, len(names))
	return names, nil
}

// tokenNames reads the names of a catalog file's tokens and nothing else
// of it. ok is false unless every token has a valid name, no two the same,
// and there is at least one.
func tokenNames(data []byte) (names []string, ok bool) {
	var file struct {
		Tokens []struct {
			Name string `yaml:"name"`
		} `yaml:"tokens"`
	}
	if err := yaml.Unmarshal(data, &file); err != nil || len(file.Tokens) == 0 {
		return nil, false
	}
	for _, t := range file.Tokens {
		names = append(names, t.Name)
	}
	return names, checkNames(names) == nil
}

// statusTokens prints the fleet of each named token. A token that cannot
// be read is shown as such and the others still are; the error then says
// which failed.
func statusTokens(ctx context.Context, rdb redis.UniversalClient, names []string, asJSON bool, stdout io.Writer) error {
	views := make([]tokenView, 0, len(names))
	var failed []string
	for _, name := range names {
		tv := readToken(ctx, rdb, name)
		if tv.err != nil {
			failed = append(failed, name)
		}
		views = append(views, tv)
	}
	if len(failed) == len(views) {
		return fmt.Errorf("status: %w", views[0].err)
	}
	now := time.Now()
	if asJSON {
		out := tokensJSON{Tokens: make([]tokenJSON, 0, len(views)), GeneratedAt: utcMillis(now)}
		for _, tv := range views {
			out.Tokens = append(out.Tokens, tv.json(now))
		}
		if err := writeJSON(stdout, out); err != nil {
			return err
		}
	} else {
		for i, tv := range views {
			if i > 0 {
				fmt.Fprintln(stdout)
			}
			printToken(stdout, tv, now)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("status: cannot read token %s", strings.Join(failed, ", "))
	}
	return nil
}

// readToken reads one token's fleet and the expiry of the token stored
// under its keys. It never reads the token itself.
func readToken(ctx context.Context, rdb redis.UniversalClient, name string) tokenView {
	st, err := tokenkeeper.ReadStatus(ctx, rdb, name)
	return tokenView{name: name, st: st, err: err}
}

// json is tv as tokensJSON shows it, at now.
func (tv tokenView) json(now time.Time) tokenJSON {
	out := tokenJSON{Name: tv.name, Replicas: []replicaJSON{}, Refreshes: []refreshJSON{}}
	if tv.err != nil {
		out.Error = tv.err.Error()
		return out
	}
	out.Leader = tv.st.Leader
	out.Replicas, out.Refreshes = fleetOf(tv.st)
	if exp := tv.st.ExpiresAt; !exp.IsZero() {
		out.TokenFingerprint = tv.st.TokenFingerprint
		out.ExpiresAt = utcMillis(exp)
		out.ExpiresIn = int64(max(exp.Sub(now), 0) / time.Second)
	}
	return out
}

// printToken writes one token of several: a header line, then its fleet
// as printFleet does, with the last few refresh attempts.
func printToken(w io.Writer, tv tokenView, now time.Time) {
	if tv.err != nil {
		fmt.Fprintf(w, "token %s: cannot read it: %v\n", tv.name, tv.err)
		return
	}
	fmt.Fprintln(w, tokenHeader(tv, now))
	printFleetBody(w, tv.st, now, statusRefreshRows)
}

// tokenHeader is the line that opens a token in the tables: its name,
// leader, stored token and its expiry, and the last refresh attempt.
func tokenHeader(tv tokenView, now time.Time) string {
	leader := "leader NONE"
	if tv.st.Leader != "" {
		leader = "leader " + tv.st.Leader
	}
	token := "no token in Redis"
	if !tv.st.ExpiresAt.IsZero() {
		fp := tv.st.TokenFingerprint
		if fp == "" {
			fp = "(fingerprint unknown)"
		}
		token = "token " + fp + " expires in " + short(tv.st.ExpiresAt.Sub(now))
	}
	last := "no refresh recorded"
	if len(tv.st.Refreshes) > 0 {
		a := tv.st.Refreshes[0]
		last = "last refresh " + a.Outcome + " " + short(now.Sub(a.At)) + " ago"
	}
	return "token " + tv.name + ": " + leader + ", " + token + ", " + last
}

// printFleet writes the fleet view as tables, with times as durations from
// now.
func printFleet(w io.Writer, f tokenkeeper.Status, now time.Time) {
	leader := f.Leader
	if leader == "" {
		leader = "NONE: no replica holds the lock"
	}
	fmt.Fprintf(w, "leader:    %s\n", leader)
	printFleetBody(w, f, now, len(f.Refreshes))
}

// printFleetBody writes the replicas of f and its last refresh attempts
// (at most maxRefreshes of them) as tables.
func printFleetBody(w io.Writer, f tokenkeeper.Status, now time.Time, maxRefreshes int) {
	ready := 0
	for _, r := range f.Replicas {
		if r.Ready {
			ready++
		}
	}
	fmt.Fprintf(w, "replicas:  %d alive, %d ready\n\n", len(f.Replicas), ready)

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

	refreshes := f.Refreshes[:min(len(f.Refreshes), maxRefreshes)]
	if len(refreshes) < len(f.Refreshes) {
		fmt.Fprintf(w, "\nlast refreshes (newest first, %d of %d; --json shows all):\n", len(refreshes), len(f.Refreshes))
	} else {
		fmt.Fprintln(w, "\nlast refreshes (newest first):")
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WHEN\tLEADER\tOUTCOME\tUPSTREAM\tTOTAL\tTOKEN\tERROR")
	for _, a := range refreshes {
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
