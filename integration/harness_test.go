//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

// Keys, names and credentials the fleet under test is configured with.
const (
	readerKey = "it-reader-key-6f2a9d4c8e1b7f3a5d0c"
	adminKey  = "it-admin-key-1e8b5f3a7c9d2e6b4f0a"

	tokenKey        = "tokenkeeper:{liveness}:token"
	lockKey         = "tokenkeeper:{liveness}:lock"
	rdpClientID     = "tokenkeeper-demo"
	rdpClientSecret = "demo-secret"

	appPort   = "8080/tcp"
	rdpPort   = "9090/tcp"
	redisPort = "6379/tcp"
	// proxyControlPort is the latency proxy's control API; it forwards
	// Redis on 6379 under the alias redis-proxy.
	proxyControlPort = "8474/tcp"
)

// timings are the fleet's lifetimes, compressed from an hour to seconds.
type timings struct {
	Lifetime      time.Duration // the fake's liveness token lifetime
	RefreshBefore time.Duration // TOKENKEEPER_REFRESH_BEFORE
	ServeMargin   time.Duration // TOKENKEEPER_SERVE_MARGIN
	LockTTL       time.Duration // TOKENKEEPER_LOCK_TTL
	Poll          time.Duration // TOKENKEEPER_POLL_INTERVAL
	RetryMin      time.Duration // TOKENKEEPER_RETRY_MIN
	RetryMax      time.Duration // TOKENKEEPER_RETRY_MAX
	RDPTimeout    time.Duration // RDP_TIMEOUT: shorter than ServeMargin, or the replica refuses to start
	// HandoverAfter is TOKENKEEPER_HANDOVER_AFTER: failed refresh attempts in
	// a row after which a leader releases the lock.
	HandoverAfter int
	// HandoverCooldown is TOKENKEEPER_HANDOVER_COOLDOWN: how long a replica
	// that handed over stays out of elections.
	HandoverCooldown time.Duration
}

// fast is what every scenario runs with: a token lives 20 s and is refreshed
// when 8 s remain, so a cycle takes about 12 s. The upstream timeout (10 s in
// production) must stay under the 2 s serve margin: 1 s is far above what
// the fake takes without injected latency. The handover keeps its default
// count; its cooldown (1 m in production, as long as RetryMax) is compressed
// as RetryMax is, so that when the upstream fails for every replica the
// replicas that handed over stand again within a retry.
var fast = timings{
	Lifetime:         20 * time.Second,
	RefreshBefore:    8 * time.Second,
	ServeMargin:      2 * time.Second,
	LockTTL:          3 * time.Second,
	Poll:             time.Second,
	RetryMin:         200 * time.Millisecond,
	RetryMax:         2 * time.Second,
	RDPTimeout:       time.Second,
	HandoverAfter:    3,
	HandoverCooldown: 2 * time.Second,
}

// minSpacing is the shortest time between two scheduled fetches that the
// checks accept: half a cycle, far above any jitter and far below a cycle.
func (tm timings) minSpacing() time.Duration { return (tm.Lifetime - tm.RefreshBefore) / 2 }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func appImage() string   { return envOr("TOKENKEEPER_IMAGE", "tokenkeeper:dev") }
func redisImage() string { return envOr("REDIS_IMAGE", "redis:7-alpine") }

// proxyImage is integration/latencyproxy's image; no registry has it.
func proxyImage() string { return envOr("LATENCYPROXY_IMAGE", "tokenkeeper/latencyproxy:dev") }

func init() {
	// Testcontainers narrates every container on stderr; the fleet's own
	// timeline says what matters when a test fails.
	if os.Getenv("TESTCONTAINERS_VERBOSE") == "" {
		tclog.SetDefault(stdlog.New(io.Discard, "", 0))
	}
	// The host's Redis client fails on purpose while Redis is down.
	redis.SetLogger(quietRedis{})
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

var (
	dockerOnce sync.Once
	dockerCli  *testcontainers.DockerClient
	dockerErr  error
)

// requireDocker returns a client of the Docker engine. Without an engine it
// skips the test, or fails it when CI=true: CI never skips this suite.
func requireDocker(t *testing.T) *testcontainers.DockerClient {
	t.Helper()
	dockerOnce.Do(func() {
		defer func() {
			if r := recover(); r != nil {
				dockerErr = fmt.Errorf("docker client: %v", r)
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		dockerCli, dockerErr = testcontainers.NewDockerClientWithOpts(ctx)
		if dockerErr == nil {
			_, dockerErr = dockerCli.Ping(ctx, client.PingOptions{})
		}
		if dockerErr == nil {
			publishOnLocalhost(ctx, dockerCli)
		}
	})
	if dockerErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and no Docker engine answers: %v", dockerErr)
		}
		t.Skipf("skipping: these tests run the fleet in containers and no Docker engine answers (%v); start Docker to run them", dockerErr)
	}
	return dockerCli
}

// publishOnLocalhost points testcontainers at localhost for published ports
// when the tests run in a container that shares its network namespace with
// the Docker engine (as on the CI machine). Testcontainers, seeing /.dockerenv,
// would otherwise use the default route's gateway, which does not publish the
// ports. The engine is in this namespace when an address of this host lies in
// the default bridge network's subnet. TESTCONTAINERS_HOST_OVERRIDE, when
// set, wins.
func publishOnLocalhost(ctx context.Context, docker *testcontainers.DockerClient) {
	if _, set := os.LookupEnv("TESTCONTAINERS_HOST_OVERRIDE"); set {
		return
	}
	if h := os.Getenv("DOCKER_HOST"); h != "" && !strings.HasPrefix(h, "unix://") {
		return
	}
	if _, err := os.Stat("/.dockerenv"); err != nil {
		return // not in a container: testcontainers already uses localhost
	}
	bridge, err := docker.NetworkInspect(ctx, "bridge", client.NetworkInspectOptions{})
	if err != nil {
		return
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return
	}
	for _, cfg := range bridge.Network.IPAM.Config {
		for _, a := range addrs {
			ipnet, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipnet.IP)
			if ok && cfg.Subnet.Contains(ip.Unmap()) {
				os.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "localhost")
				return
			}
		}
	}
}

// replica is one tokenkeeper container; its name is also its instance id and
// its network alias.
type replica struct {
	name string
	env  map[string]string // added to, or replacing, the harness's settings
	c    *testcontainers.DockerContainer
	http *http.Client

	mu   sync.Mutex
	base string // http://host:port, "" while stopped
}

func (r *replica) url(path string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.base == "" {
		return ""
	}
	return r.base + path
}

func newReplica(name string, env map[string]string) *replica {
	return &replica{name: name, env: env, http: &http.Client{Timeout: 1500 * time.Millisecond}}
}

func (r *replica) setBase(base string) {
	r.mu.Lock()
	r.base = base
	r.mu.Unlock()
}

// fleet is one test's world: two networks, Redis, the fake RDP, replicas,
// the observers, and the timeline printed when the test fails.
type fleet struct {
	t      *testing.T
	tm     timings
	docker *testcontainers.DockerClient
	// edge carries the published ports of the replicas; core carries Redis.
	// Docker picks a container's gateway (which owns its published ports) by
	// network name, so edge sorts first: disconnecting a replica from core
	// leaves it reachable from the host.
	edge, core string
	networks   []string

	redis    *testcontainers.DockerContainer
	rdp      *testcontainers.DockerContainer
	viaProxy bool                            // withLatencyProxy
	proxy    *testcontainers.DockerContainer // nil without it
	catalog  string                          // withCatalog: the replicas' catalog file
	idp      *testcontainers.DockerContainer // withCatalog: a second fake upstream, "idp"
	idpBase  string
	replicas []*replica
	all      []*testcontainers.DockerContainer

	rdpBase   string
	proxyBase string // the latency proxy's control API
	redisURL  string // TOKENKEEPER_REDIS_URL of the replicas
	hostRDB   *hostRedis

	// topo is the Redis topology (withSentinel, withCluster); topoSingle is
	// the one server above.
	topo topo

	start  time.Time
	tl     *timeline
	rec    *recorder
	leader *leaderWatch

	pausedMu sync.Mutex
	paused   map[string]bool // container id
}

// option changes how newFleet builds the fleet.
type option func(*fleet)

// withLatencyProxy puts the latency proxy (integration/latencyproxy) between
// the replicas and Redis, latency off; setRedisLatency turns it on. The
// host's view of Redis (the leader watch, dumps) goes around it.
func withLatencyProxy() option {
	return func(f *fleet) { f.viaProxy = true }
}

// withCatalog gives every replica the catalog file yaml
// (TOKENKEEPER_CONFIG) and starts a second fake upstream on both networks
// under the alias idp, for tokens of source oauth2
// (http://idp:9090/oauth2/token).
func withCatalog(yaml string) option {
	return func(f *fleet) { f.catalog = yaml }
}

// newFleet starts Redis, the fake RDP and n replicas on fresh networks, waits
// until every replica serves the first token, and starts reading it from
// every replica. Everything is removed when the test ends.
func newFleet(t *testing.T, n int, tm timings, opts ...option) *fleet {
	t.Helper()
	docker := requireDocker(t)
	ctx := context.Background()
	if _, err := docker.ImageInspect(ctx, appImage()); err != nil {
		t.Fatalf("image %s is not available (%v): build it with scripts/build-images.sh, or name another with TOKENKEEPER_IMAGE", appImage(), err)
	}
	f := &fleet{
		t:        t,
		tm:       tm,
		docker:   docker,
		tl:       &timeline{},
		paused:   map[string]bool{},
		redisURL: "redis://redis:6379/0",
	}
	for _, o := range opts {
		o(f)
	}
	t.Cleanup(f.cleanup)

	prefix := "tk-it-" + strings.ToLower(rand.Text()[:8])
	f.edge, f.core = prefix+"-a-edge", prefix+"-b-core"
	for _, name := range []string{f.edge, f.core} {
		if _, err := docker.NetworkCreate(ctx, name, client.NetworkCreateOptions{
			Driver: "bridge",
			Labels: testcontainers.GenericLabels(),
		}); err != nil {
			t.Fatalf("create network %s: %v", name, err)
		}
		f.networks = append(f.networks, name)
	}

	var err error
	if f.topo.kind != topoSingle {
		f.startTopology(ctx)
	} else {
		f.redis, err = testcontainers.Run(ctx, redisImage(),
			testcontainers.WithEntrypoint("redis-server"),
			testcontainers.WithCmd("--save", "", "--appendonly", "no", "--protected-mode", "no"),
			testcontainers.WithExposedPorts(redisPort),
			tcnetwork.WithNetworkName([]string{"redis"}, f.core),
			testcontainers.WithWaitStrategyAndDeadline(30*time.Second, wait.ForLog("Ready to accept connections")),
		)
		f.track(f.redis)
		if err != nil {
			t.Fatalf("start redis (%s; without a registry, build tokenkeeper/redis:debian with scripts/build-images.sh and set REDIS_IMAGE): %v", redisImage(), err)
		}
		f.hostRDB = &hostRedis{c: f.redis}
	}
	if f.viaProxy {
		f.startProxy(ctx)
		f.redisURL = "redis://redis-proxy:6379/0"
	}

	// The fake upstream is on both networks: a replica cut off from Redis
	// still reaches it, so only the lock keeps it from fetching.
	f.rdp, err = testcontainers.Run(ctx, appImage(),
		testcontainers.WithEntrypoint("/tokenkeeper"),
		testcontainers.WithCmd("fake-rdp"),
		testcontainers.WithEnv(map[string]string{
			"FAKE_RDP_LISTEN":         ":9090",
			"FAKE_RDP_TOKEN_LIFETIME": tm.Lifetime.String(),
		}),
		testcontainers.WithExposedPorts(rdpPort),
		tcnetwork.WithNetworkName([]string{"rdp"}, f.core),
		tcnetwork.WithNetworkName([]string{"rdp"}, f.edge),
		testcontainers.WithWaitStrategyAndDeadline(30*time.Second,
			wait.ForHTTP("/fake/v1/stats").WithPort(rdpPort)),
	)
	f.track(f.rdp)
	if err != nil {
		t.Fatalf("start fake RDP: %v", err)
	}
	if f.rdpBase, err = endpoint(ctx, f.rdp, rdpPort); err != nil {
		t.Fatal(err)
	}

	if f.catalog != "" {
		f.idp, f.idpBase = f.startFake(ctx, "idp")
	}

	f.replicas = make([]*replica, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		r := newReplica(fmt.Sprintf("r%d", i+1), nil)
		f.replicas[i] = r
		wg.Go(func() { errs[i] = f.startReplica(ctx, r) })
	}
	wg.Wait()
	for _, r := range f.replicas {
		f.track(r.c)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("start replicas: %v", err)
	}

	f.start = time.Now()
	f.tl.start = f.start
	f.leader = startLeaderWatch(f)
	f.waitFor(30*time.Second, "every replica ready", func() (bool, string) {
		for _, r := range f.replicas {
			if st := f.readyz(r); st != http.StatusOK {
				return false, fmt.Sprintf("%s /readyz %d", r.name, st)
			}
		}
		return true, ""
	})
	first := f.token(1)
	if got := first.ExpiresAt.Sub(first.IssuedAt); got < tm.Lifetime-time.Second || got > tm.Lifetime+time.Second {
		t.Fatalf("the fake issued a token for %v, want %v: FAKE_RDP_TOKEN_LIFETIME not honoured", got, tm.Lifetime)
	}
	f.rec = startRecorder(f)
	f.waitServing(first.Token, f.replicas, 5*time.Second)
	return f
}

// startFake starts a fake upstream on both networks under alias, and
// returns it with its control API's base URL.
func (f *fleet) startFake(ctx context.Context, alias string) (*testcontainers.DockerContainer, string) {
	f.t.Helper()
	c, err := testcontainers.Run(ctx, appImage(),
		testcontainers.WithEntrypoint("/tokenkeeper"),
		testcontainers.WithCmd("fake-rdp"),
		testcontainers.WithEnv(map[string]string{
			"FAKE_RDP_LISTEN":         ":9090",
			"FAKE_RDP_TOKEN_LIFETIME": f.tm.Lifetime.String(),
		}),
		testcontainers.WithExposedPorts(rdpPort),
		tcnetwork.WithNetworkName([]string{alias}, f.core),
		tcnetwork.WithNetworkName([]string{alias}, f.edge),
		testcontainers.WithWaitStrategyAndDeadline(30*time.Second,
			wait.ForHTTP("/fake/v1/stats").WithPort(rdpPort)),
	)
	f.track(c)
	if err != nil {
		f.t.Fatalf("start fake upstream %s: %v", alias, err)
	}
	base, err := endpoint(ctx, c, rdpPort)
	if err != nil {
		f.t.Fatal(err)
	}
	return c, base
}

func (f *fleet) track(c *testcontainers.DockerContainer) {
	if c != nil {
		f.all = append(f.all, c)
	}
}

// startProxy starts the latency proxy in front of Redis, on the core
// network under the alias redis-proxy.
func (f *fleet) startProxy(ctx context.Context) {
	f.t.Helper()
	if _, err := f.docker.ImageInspect(ctx, proxyImage()); err != nil {
		f.t.Fatalf("image %s is not available (%v): build it with scripts/build-images.sh latencyproxy, or name another with LATENCYPROXY_IMAGE", proxyImage(), err)
	}
	var err error
	f.proxy, err = testcontainers.Run(ctx, proxyImage(),
		testcontainers.WithEnv(map[string]string{
			"LATENCYPROXY_LISTEN":  ":6379",
			"LATENCYPROXY_TARGET":  "redis:6379",
			"LATENCYPROXY_CONTROL": ":8474",
		}),
		testcontainers.WithExposedPorts(proxyControlPort),
		tcnetwork.WithNetworkName([]string{"redis-proxy"}, f.core),
		testcontainers.WithWaitStrategyAndDeadline(30*time.Second,
			wait.ForHTTP("/latency").WithPort(proxyControlPort)),
	)
	f.track(f.proxy)
	if err != nil {
		f.t.Fatalf("start the latency proxy: %v", err)
	}
	if f.proxyBase, err = endpoint(ctx, f.proxy, proxyControlPort); err != nil {
		f.t.Fatal(err)
	}
}

// startReplica creates and starts r's container and waits for /healthz.
func (f *fleet) startReplica(ctx context.Context, r *replica) error {
	tm := f.tm
	env := map[string]string{
		"TOKENKEEPER_LISTEN":            ":8080",
		"TOKENKEEPER_REDIS_URL":         f.redisURL,
		"TOKENKEEPER_API_KEYS":          readerKey,
		"TOKENKEEPER_ADMIN_KEYS":        adminKey,
		"TOKENKEEPER_INSTANCE_ID":       r.name,
		"TOKENKEEPER_REFRESH_BEFORE":    tm.RefreshBefore.String(),
		"TOKENKEEPER_LOCK_TTL":          tm.LockTTL.String(),
		"TOKENKEEPER_TOKEN_LIFETIME":    tm.Lifetime.String(),
		"TOKENKEEPER_SERVE_MARGIN":      tm.ServeMargin.String(),
		"TOKENKEEPER_POLL_INTERVAL":     tm.Poll.String(),
		"TOKENKEEPER_RETRY_MIN":         tm.RetryMin.String(),
		"TOKENKEEPER_RETRY_MAX":         tm.RetryMax.String(),
		"TOKENKEEPER_HANDOVER_AFTER":    fmt.Sprint(tm.HandoverAfter),
		"TOKENKEEPER_HANDOVER_COOLDOWN": tm.HandoverCooldown.String(),
		"TOKENKEEPER_LOG_LEVEL":         "debug",
		"RDP_BASE_URL":                  "http://rdp:9090",
		"RDP_TIMEOUT":                   tm.RDPTimeout.String(),
		"RDP_AUTH":                      "v2",
		"RDP_CLIENT_ID":                 rdpClientID,
		"RDP_CLIENT_SECRET":             rdpClientSecret,
	}
	var files []testcontainers.ContainerFile
	if f.catalog != "" {
		env["TOKENKEEPER_CONFIG"] = "/tokens.yaml"
		files = append(files, testcontainers.ContainerFile{
			Reader: strings.NewReader(f.catalog), ContainerFilePath: "/tokens.yaml", FileMode: 0o644,
		})
	}
	maps.Copy(env, f.topo.env)
	maps.Copy(env, r.env)
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithEntrypoint("/tokenkeeper"),
		testcontainers.WithCmd("serve"),
		testcontainers.WithEnv(env),
		testcontainers.WithFiles(files...),
		testcontainers.WithExposedPorts(appPort),
		tcnetwork.WithNetworkName([]string{r.name}, f.edge),
		tcnetwork.WithNetworkName([]string{r.name}, f.core),
		testcontainers.WithWaitStrategyAndDeadline(30*time.Second,
			wait.ForHTTP("/healthz").WithPort(appPort)),
	}
	if f.topo.side != "" {
		opts = append(opts, tcnetwork.WithNetworkName([]string{r.name}, f.topo.side))
	}
	var err error
	r.c, err = testcontainers.Run(ctx, appImage(), opts...)
	if err != nil {
		return fmt.Errorf("%s: %w", r.name, err)
	}
	base, err := endpoint(ctx, r.c, appPort)
	if err != nil {
		return fmt.Errorf("%s: %w", r.name, err)
	}
	r.setBase(base)
	return nil
}

// endpoint returns http://host:port for a container port as the host sees it.
func endpoint(ctx context.Context, c *testcontainers.DockerContainer, port string) (string, error) {
	host, err := c.Host(ctx)
	if err != nil {
		return "", fmt.Errorf("host of %s: %w", c.GetContainerID()[:12], err)
	}
	p, err := c.MappedPort(ctx, port)
	if err != nil {
		return "", fmt.Errorf("mapped port %s of %s: %w", port, c.GetContainerID()[:12], err)
	}
	return fmt.Sprintf("http://%s:%s", host, p.Port()), nil
}

// cleanup stops the observers, prints the timeline when the test failed, and
// removes every container and network the fleet made.
func (f *fleet) cleanup() {
	if f.rec != nil {
		f.rec.stop()
	}
	if f.leader != nil {
		f.leader.stop()
	}
	if f.t.Failed() {
		f.printTimeline()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f.pausedMu.Lock()
	for id := range f.paused {
		_, _ = f.docker.ContainerUnpause(ctx, id, client.ContainerUnpauseOptions{})
	}
	f.pausedMu.Unlock()
	if f.hostRDB != nil {
		f.hostRDB.close()
	}
	for _, c := range f.all {
		if err := c.Terminate(ctx, testcontainers.StopTimeout(time.Second)); err != nil && !strings.Contains(err.Error(), "No such container") {
			f.t.Logf("terminate %s: %v", c.GetContainerID()[:12], err)
		}
	}
	for _, name := range f.networks {
		if _, err := f.docker.NetworkRemove(ctx, name, client.NetworkRemoveOptions{}); err != nil {
			f.t.Logf("remove network %s: %v", name, err)
		}
	}
}

// waitFor polls cond every 100 ms until it holds and returns when it did. When
// timeout passes first the test fails with what and cond's last detail.
func (f *fleet) waitFor(timeout time.Duration, what string, cond func() (bool, string)) time.Time {
	f.t.Helper()
	at, detail, ok := f.poll(timeout, what, cond)
	if !ok {
		f.t.Fatalf("after %v still waiting for %s (last: %s)", timeout, what, detail)
	}
	return at
}

// poll is waitFor that returns, instead of failing the test, cond's last
// detail and false when timeout passes first.
func (f *fleet) poll(timeout time.Duration, what string, cond func() (bool, string)) (time.Time, string, bool) {
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			now := time.Now()
			f.note("%s", what)
			return now, detail, true
		}
		if time.Now().After(deadline) {
			return time.Time{}, detail, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sleepUntil waits for a point on the scenario's schedule. Containers run on
// real clocks, so the schedule is real time.
// serveDeadline is the earliest a replica may stop serving tok: its
// expiry less the serve margin and the write's budget. A replica dates a
// token early, never late: Redis holds it with its life cut by the whole
// time the write may take to be sent (the client's read timeout, half the
// lock TTL), since go-redis may send it again.
func (f *fleet) serveDeadline(tok fakeToken) time.Time {
	return tok.ExpiresAt.Add(-f.tm.ServeMargin - f.tm.LockTTL/2)
}

func sleepUntil(at time.Time) {
	if d := time.Until(at); d > 0 {
		time.Sleep(d)
	}
}

func (f *fleet) note(format string, args ...any) { f.tl.add(fmt.Sprintf(format, args...)) }

// figure logs a measured figure in one greppable form.
func (f *fleet) figure(name string, v any) {
	f.t.Helper()
	if d, ok := v.(time.Duration); ok {
		v = d.Round(time.Millisecond)
	}
	f.t.Logf("FIGURE %s %s=%v", f.t.Name(), name, v)
}

func (f *fleet) byName(name string) *replica {
	for _, r := range f.replicas {
		if r.name == name {
			return r
		}
	}
	return nil
}

func (f *fleet) others(x *replica) []*replica {
	var out []*replica
	for _, r := range f.replicas {
		if r != x {
			out = append(out, r)
		}
	}
	return out
}

// --- Docker faults ---

func (f *fleet) kill(r *replica) {
	f.t.Helper()
	f.note("SIGKILL %s", r.name)
	if _, err := f.docker.ContainerKill(context.Background(), r.c.GetContainerID(), client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		f.t.Fatalf("kill %s: %v", r.name, err)
	}
	r.setBase("")
}

func (f *fleet) pause(c *testcontainers.DockerContainer, what string) {
	f.t.Helper()
	f.note("pause %s", what)
	f.pausedMu.Lock()
	f.paused[c.GetContainerID()] = true
	f.pausedMu.Unlock()
	if _, err := f.docker.ContainerPause(context.Background(), c.GetContainerID(), client.ContainerPauseOptions{}); err != nil {
		f.t.Fatalf("pause %s: %v", what, err)
	}
}

func (f *fleet) unpause(c *testcontainers.DockerContainer, what string) {
	f.t.Helper()
	f.note("unpause %s", what)
	if _, err := f.docker.ContainerUnpause(context.Background(), c.GetContainerID(), client.ContainerUnpauseOptions{}); err != nil {
		f.t.Fatalf("unpause %s: %v", what, err)
	}
	f.pausedMu.Lock()
	delete(f.paused, c.GetContainerID())
	f.pausedMu.Unlock()
}

func (f *fleet) disconnect(r *replica, net string) {
	f.t.Helper()
	f.note("disconnect %s from %s", r.name, net)
	if _, err := f.docker.NetworkDisconnect(context.Background(), net, client.NetworkDisconnectOptions{Container: r.c.GetContainerID(), Force: true}); err != nil {
		f.t.Fatalf("disconnect %s: %v", r.name, err)
	}
}

func (f *fleet) connect(r *replica, net string) {
	f.t.Helper()
	f.note("connect %s to %s", r.name, net)
	if _, err := f.docker.NetworkConnect(context.Background(), net, client.NetworkConnectOptions{
		Container:      r.c.GetContainerID(),
		EndpointConfig: &network.EndpointSettings{Aliases: []string{r.name}},
	}); err != nil {
		f.t.Fatalf("connect %s: %v", r.name, err)
	}
}

// stopReplica stops r with SIGTERM, allowing it timeout to exit.
func (f *fleet) stopReplica(r *replica, timeout time.Duration) {
	f.t.Helper()
	f.note("SIGTERM %s", r.name)
	if err := r.c.Stop(context.Background(), &timeout); err != nil {
		f.t.Fatalf("stop %s: %v", r.name, err)
	}
	r.setBase("")
	f.note("%s exited", r.name)
}

// restartReplica starts r's stopped container again; its published port
// changes.
func (f *fleet) restartReplica(r *replica) {
	f.t.Helper()
	ctx := context.Background()
	f.note("start %s", r.name)
	if err := r.c.Start(ctx); err != nil {
		f.t.Fatalf("start %s: %v", r.name, err)
	}
	base, err := endpoint(ctx, r.c, appPort)
	if err != nil {
		f.t.Fatal(err)
	}
	r.setBase(base)
}

// addReplica starts one more replica, named name, with env added to (or
// replacing) the harness's settings; waits until it is ready; and from then
// on reads the token from it as from the others.
func (f *fleet) addReplica(name string, env map[string]string) *replica {
	f.t.Helper()
	r := newReplica(name, env)
	f.note("start %s %v", name, env)
	err := f.startReplica(context.Background(), r)
	f.track(r.c)
	if err != nil {
		f.t.Fatalf("start replica: %v", err)
	}
	f.replicas = append(f.replicas, r)
	f.waitFor(15*time.Second, name+" ready", func() (bool, string) {
		st := f.readyz(r)
		return st == http.StatusOK, fmt.Sprintf("/readyz %d", st)
	})
	f.rec.watch(r)
	return r
}

// restartRedis stops Redis and starts it again, empty (no persistence), and
// returns when it answers PING.
func (f *fleet) restartRedis() {
	f.t.Helper()
	ctx := context.Background()
	f.note("stop redis")
	timeout := time.Second
	if err := f.redis.Stop(ctx, &timeout); err != nil {
		f.t.Fatalf("stop redis: %v", err)
	}
	f.note("start redis")
	if err := f.redis.Start(ctx); err != nil {
		f.t.Fatalf("start redis: %v", err)
	}
	f.waitFor(20*time.Second, "redis answers PING", func() (bool, string) {
		err := f.hostRDB.do(func(c redis.UniversalClient, ctx context.Context) error { return c.Ping(ctx).Err() })
		return err == nil, fmt.Sprint(err)
	})
}

// --- the fake upstream ---

type fakeToken struct {
	Token     string    `json:"token"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

type fakeCall struct {
	At     time.Time `json:"at"`
	Op     string    `json:"op"`
	Status int       `json:"status"`
}

type fakeStats struct {
	AuthCalls struct {
		V1Password int `json:"v1_password"`
		V1Refresh  int `json:"v1_refresh"`
		V2         int `json:"v2"`
	} `json:"auth_calls"`
	LivenessCalls int         `json:"liveness_calls"`
	LivenessOK    int         `json:"liveness_ok"`
	Calls         []fakeCall  `json:"calls"`
	Tokens        []fakeToken `json:"tokens"`
}

func (s fakeStats) authCalls() int {
	return s.AuthCalls.V1Password + s.AuthCalls.V1Refresh + s.AuthCalls.V2
}

// fingerprint is how the replicas name a token without showing it
// (cache.Fingerprint): the first 6 bytes of its SHA-256, in hex.
func fingerprint(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

// issuedBetween returns the tokens issued in [from, to).
func (s fakeStats) issuedBetween(from, to time.Time) []fakeToken {
	var out []fakeToken
	for _, tk := range s.Tokens {
		if !tk.IssuedAt.Before(from) && tk.IssuedAt.Before(to) {
			out = append(out, tk)
		}
	}
	return out
}

var controlHTTP = &http.Client{Timeout: 5 * time.Second}

func (f *fleet) stats() fakeStats {
	f.t.Helper()
	var s fakeStats
	resp, err := controlHTTP.Get(f.rdpBase + "/fake/v1/stats")
	if err == nil {
		defer resp.Body.Close()
		err = json.NewDecoder(resp.Body).Decode(&s)
	}
	if err != nil {
		f.t.Fatalf("fake RDP stats: %v", err)
	}
	f.tl.learn(s.Tokens)
	return s
}

// knobs changes the fake's knobs; fields absent stay as they are.
func (f *fleet) knobs(k map[string]any) {
	f.t.Helper()
	f.knobsOf(f.rdpBase, k)
}

// knobsOf changes the knobs of the fake upstream at base.
func (f *fleet) knobsOf(base string, k map[string]any) {
	f.t.Helper()
	body, _ := json.Marshal(k)
	f.note("fake knobs %s %s", base, body)
	req, _ := http.NewRequest(http.MethodPut, base+"/fake/v1/knobs", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := controlHTTP.Do(req)
	if err != nil {
		f.t.Fatalf("fake RDP knobs: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		f.t.Fatalf("fake RDP knobs %s: %d %s", body, resp.StatusCode, msg)
	}
}

// token waits until the fake has issued its n-th token (1-based) and returns
// it; the wait allows n-1 cycles and a few seconds.
func (f *fleet) token(n int) fakeToken {
	f.t.Helper()
	cycle := f.tm.Lifetime - f.tm.RefreshBefore
	var tk fakeToken
	f.waitFor(time.Duration(n-1)*cycle+10*time.Second, fmt.Sprintf("upstream token #%d", n), func() (bool, string) {
		s := f.stats()
		if len(s.Tokens) < n {
			return false, fmt.Sprintf("%d tokens issued", len(s.Tokens))
		}
		tk = s.Tokens[n-1]
		return true, ""
	})
	return tk
}

// tokenAfter waits up to timeout for the first token issued at or after t.
func (f *fleet) tokenAfter(t time.Time, timeout time.Duration) fakeToken {
	f.t.Helper()
	var tk fakeToken
	f.waitFor(timeout, "a token issued after "+f.tl.rel(t), func() (bool, string) {
		s := f.stats()
		for _, x := range s.Tokens {
			if !x.IssuedAt.Before(t) {
				tk = x
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d tokens issued", len(s.Tokens))
	})
	return tk
}

// --- the latency proxy in front of Redis (withLatencyProxy) ---

// proxyStats is the latency proxy's answer: the range set and its counters.
type proxyStats struct {
	Min     string `json:"min"`
	Max     string `json:"max"`
	Conns   int    `json:"conns"`
	Chunks  int    `json:"chunks"`
	Delayed int    `json:"delayed"`
	Longest string `json:"longest"`
}

// setRedisLatency holds back every answer of Redis to the replicas by a
// delay drawn from [lo, hi]; zero both to turn it off. It returns what the
// proxy counted until then.
func (f *fleet) setRedisLatency(lo, hi time.Duration) proxyStats {
	f.t.Helper()
	body := fmt.Sprintf(`{"min":%q,"max":%q}`, lo, hi)
	f.note("redis latency %v..%v", lo, hi)
	req, _ := http.NewRequest(http.MethodPut, f.proxyBase+"/latency", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	return f.proxyCall(req)
}

func (f *fleet) proxyCall(req *http.Request) proxyStats {
	f.t.Helper()
	if f.proxyBase == "" {
		f.t.Fatal("no latency proxy: start the fleet withLatencyProxy()")
	}
	resp, err := controlHTTP.Do(req)
	if err != nil {
		f.t.Fatalf("latency proxy: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		f.t.Fatalf("latency proxy %s %s: %d %s", req.Method, req.URL.Path, resp.StatusCode, msg)
	}
	var s proxyStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		f.t.Fatalf("latency proxy answer: %v", err)
	}
	return s
}

// --- a replica's HTTP face ---

func (f *fleet) get(r *replica, path, key string) (int, http.Header, []byte, error) {
	u := r.url(path)
	if u == "" {
		return 0, nil, nil, errors.New("stopped")
	}
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, resp.Header, body, err
}

func (f *fleet) readyz(r *replica) int {
	st, _, _, _ := f.get(r, "/readyz", "")
	return st
}

// status is the admin view of a replica; fields beyond these are kept raw.
type status struct {
	Instance    string          `json:"instance"`
	Leader      string          `json:"leader"`
	IsLeader    bool            `json:"is_leader"`
	Ready       bool            `json:"ready"`
	NextRefresh time.Time       `json:"next_refresh"`
	LastError   string          `json:"last_error"`
	Replicas    []replicaStatus `json:"replicas"`
	raw         string
}

// replicaStatus is one replica of the fleet view in a status answer, from
// its last heartbeat.
type replicaStatus struct {
	Instance string `json:"instance"`
	Ready    bool   `json:"ready"`
	Leader   bool   `json:"leader"`
	// Upstream is how the replica's own calls to the upstream fare
	// ("failing" after failed attempts), UpstreamError the last failure.
	Upstream      string `json:"upstream"`
	UpstreamError string `json:"upstream_error"`
}

// replica returns the fleet view's entry for name.
func (s status) replica(name string) (replicaStatus, bool) {
	for _, r := range s.Replicas {
		if r.Instance == name {
			return r, true
		}
	}
	return replicaStatus{}, false
}

func (f *fleet) status(r *replica) (status, error) {
	st, _, body, err := f.get(r, "/v1/status", adminKey)
	if err != nil {
		return status{}, err
	}
	if st != http.StatusOK {
		return status{}, fmt.Errorf("status %d: %s", st, body)
	}
	var s status
	if err := json.Unmarshal(body, &s); err != nil {
		return status{}, fmt.Errorf("decode status %q: %w", body, err)
	}
	s.raw = string(bytes.TrimSpace(body))
	return s, nil
}

// forceRefresh asks r to refresh the token now (admin); it blocks until r
// answers.
func (f *fleet) forceRefresh(r *replica, timeout time.Duration) (int, string, error) {
	u := r.url("/v1/tokens/liveness/refresh")
	if u == "" {
		return 0, "", errors.New("stopped")
	}
	req, _ := http.NewRequest(http.MethodPost, u, nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, string(bytes.TrimSpace(body)), nil
}

// --- Redis as the host sees it ---

// hostRedis is a client of the fleet's Redis through its published port; it
// follows the port when Redis restarts.
type hostRedis struct {
	c *testcontainers.DockerContainer
	// open, when set, makes the client instead (a Sentinel or Cluster
	// topology); c is then unused.
	open func() redis.UniversalClient

	mu     sync.Mutex
	addr   string
	cli    redis.UniversalClient
	opened time.Time // when open last made cli
}

func (h *hostRedis) client(ctx context.Context, fresh bool) (redis.UniversalClient, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cli != nil && !fresh {
		return h.cli, nil
	}
	if h.open != nil {
		// The failover and cluster clients follow the topology themselves:
		// make a new one only now and then, when one keeps failing.
		if h.cli == nil || time.Since(h.opened) > 2*time.Second {
			if h.cli != nil {
				h.cli.Close()
			}
			h.cli, h.opened = h.open(), time.Now()
		}
		return h.cli, nil
	}
	host, err := h.c.Host(ctx)
	if err != nil {
		return nil, err
	}
	p, err := h.c.MappedPort(ctx, redisPort)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("%s:%s", host, p.Port())
	if h.cli != nil && addr == h.addr {
		return h.cli, nil
	}
	if h.cli != nil {
		h.cli.Close()
	}
	h.addr = addr
	h.cli = redis.NewClient(&redis.Options{
		Addr:         addr,
		DialTimeout:  300 * time.Millisecond,
		ReadTimeout:  300 * time.Millisecond,
		WriteTimeout: 300 * time.Millisecond,
		MaxRetries:   -1,
		PoolSize:     4,
	})
	return h.cli, nil
}

// do runs fn with a client and a short deadline; after a failure it looks the
// published port up again for the next call.
func (h *hostRedis) do(fn func(redis.UniversalClient, context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := h.client(ctx, false)
	if err != nil {
		return err
	}
	err = fn(c, ctx)
	if err != nil && !errors.Is(err, redis.Nil) {
		_, _ = h.client(ctx, true)
	}
	return err
}

func (h *hostRedis) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cli != nil {
		h.cli.Close()
		h.cli = nil
	}
}

// dump returns the value stored at key whatever its type, "" when absent.
func (h *hostRedis) dump(key string) (string, error) {
	var out string
	err := h.do(func(c redis.UniversalClient, ctx context.Context) error {
		typ, err := c.Type(ctx, key).Result()
		if err != nil {
			return err
		}
		switch typ {
		case "none":
			out = ""
		case "string":
			out, err = c.Get(ctx, key).Result()
		case "hash":
			var m map[string]string
			m, err = c.HGetAll(ctx, key).Result()
			out = fmt.Sprint(m)
		default:
			out = "(" + typ + ")"
		}
		return err
	})
	return out, err
}

// lockHolder returns the instance id in the lock's value, "" when no one
// holds it.
func (h *hostRedis) lockHolder() (string, error) {
	v, err := h.dump(lockKey)
	if err != nil {
		return "", err
	}
	return holderOf(v), nil
}

// holderOf returns the instance in a lock value, tk:<16 hex>:<instance>
// (docs/architecture.md, "Redis keys"), or "" when it names none.
func holderOf(v string) string {
	if rest, ok := strings.CutPrefix(v, "tk:"); ok && len(rest) > 17 && rest[16] == ':' {
		return rest[17:]
	}
	return ""
}
