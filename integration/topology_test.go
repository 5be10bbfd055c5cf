//go:build integration

package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

// The replicated Redis topologies: Sentinel (a master, two replicas, three
// sentinels) and Cluster (three masters, three replicas), started from the
// same image as the single server (Debian's redis-server runs all three
// roles).
const (
	sentinelPort = "26379/tcp"
	masterName   = "mymaster"

	// waitTimeout is TOKENKEEPER_REDIS_WAIT_TIMEOUT in the replicated
	// topologies: far above a healthy replica's acknowledgement on one
	// machine, far below the lock TTL.
	waitTimeout = 500 * time.Millisecond
	// downAfter is Sentinel's down-after-milliseconds and Cluster's
	// cluster-node-timeout: how long a master may not answer before a
	// failover starts (30 s and 15 s by default, compressed as the
	// lifetimes are).
	downAfter = time.Second
)

type topoKind int

const (
	topoSingle topoKind = iota
	topoSentinel
	topoCluster
)

// topo is the fleet's Redis when it is more than one server.
type topo struct {
	kind topoKind
	// env is added to every replica's settings: the mode, the URL, WAIT.
	env map[string]string
	// side is a second network (Sentinel only; "" otherwise) on which the
	// master first lives, alone with the replicas' replication links, the
	// sentinels' view of it and the tokenkeeper replicas: the scenarios
	// cut it to partition the master or to stop replication. Every other
	// path (promoted masters, sentinels among themselves) runs over core:
	// replicas and sentinels announce their core address.
	side string
	// minReplicas is the master's min-replicas-to-write (Sentinel only).
	minReplicas int

	master    *redisNode   // Sentinel: the first master
	replicas  []*redisNode // Sentinel: its replicas
	sentinels []*redisNode
	nodes     []*redisNode // Cluster: every node

	mu    sync.Mutex
	addrs map[string]string // container address -> address published on the host
}

// redisNode is one Redis server or Sentinel of a topology; name is also its
// network alias.
type redisNode struct {
	name string
	port string // container port: redisPort or sentinelPort
	c    *testcontainers.DockerContainer
}

// withSentinel runs Redis as one master, two replicas and three sentinels
// (quorum 2); the master refuses writes unless minReplicas replicas are
// connected, lagging at most a second (min-replicas-to-write; 0: off). The
// replicas speak to the sentinels, WAIT for one replica.
func withSentinel(minReplicas int) option {
	return func(f *fleet) {
		f.topo.kind = topoSentinel
		f.topo.minReplicas = minReplicas
		f.topo.env = map[string]string{
			"TOKENKEEPER_REDIS_MODE":          "sentinel",
			"TOKENKEEPER_REDIS_URL":           "redis://s1:26379?addr=s2:26379&addr=s3:26379&master_name=" + masterName,
			"TOKENKEEPER_REDIS_WAIT_REPLICAS": "1",
			"TOKENKEEPER_REDIS_WAIT_TIMEOUT":  waitTimeout.String(),
		}
	}
}

// withCluster runs Redis as a Cluster of six nodes, three masters with a
// replica each; the replicas WAIT for one replica.
func withCluster() option {
	return func(f *fleet) {
		f.topo.kind = topoCluster
		f.topo.env = map[string]string{
			"TOKENKEEPER_REDIS_MODE":          "cluster",
			"TOKENKEEPER_REDIS_URL":           "redis://n1:6379?addr=n2:6379&addr=n3:6379",
			"TOKENKEEPER_REDIS_WAIT_REPLICAS": "1",
			"TOKENKEEPER_REDIS_WAIT_TIMEOUT":  waitTimeout.String(),
		}
	}
}

// startTopology starts the topology newFleet was asked for and points
// hostRDB at it.
func (f *fleet) startTopology(ctx context.Context) {
	f.t.Helper()
	start := time.Now()
	switch f.topo.kind {
	case topoSentinel:
		f.startSentinel(ctx)
	case topoCluster:
		f.startCluster(ctx)
	}
	f.figure("topology_ready", time.Since(start))
}

// serverArgs are every Redis server's arguments: no persistence, clients
// from other containers.
var serverArgs = []string{"--protected-mode", "no", "--save", "", "--appendonly", "no"}

// runNode starts one Redis server (port redisPort) or Sentinel (sentinelPort)
// with entrypoint and args, reachable as name on nets.
func (f *fleet) runNode(ctx context.Context, name, port string, nets []string, ready string, entrypoint []string, args ...string) (*redisNode, error) {
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithEntrypoint(entrypoint...),
		testcontainers.WithCmd(args...),
		testcontainers.WithExposedPorts(port),
		testcontainers.WithWaitStrategyAndDeadline(30*time.Second, wait.ForLog(ready)),
	}
	for _, n := range nets {
		opts = append(opts, tcnetwork.WithNetworkName([]string{name}, n))
	}
	c, err := testcontainers.Run(ctx, redisImage(), opts...)
	n := &redisNode{name: name, port: port, c: c}
	if err != nil {
		return n, fmt.Errorf("start %s (%s; without a registry, build tokenkeeper/redis:debian with scripts/build-images.sh and set REDIS_IMAGE): %w", name, redisImage(), err)
	}
	return n, nil
}

// startNodes starts the nodes of specs in parallel and fails the test if
// one does not start.
func (f *fleet) startNodes(ctx context.Context, start []func() (*redisNode, error)) []*redisNode {
	f.t.Helper()
	out := make([]*redisNode, len(start))
	errs := make([]error, len(start))
	var wg sync.WaitGroup
	for i, fn := range start {
		wg.Go(func() { out[i], errs[i] = fn() })
	}
	wg.Wait()
	for _, n := range out {
		if n != nil {
			f.track(n.c)
		}
	}
	for _, err := range errs {
		if err != nil {
			f.t.Fatal(err)
		}
	}
	return out
}

// ipOn returns n's address on the network net.
func (f *fleet) ipOn(n *redisNode, net string) string {
	f.t.Helper()
	info, err := n.c.Inspect(context.Background())
	if err != nil {
		f.t.Fatalf("inspect %s: %v", n.name, err)
	}
	ep, ok := info.NetworkSettings.Networks[net]
	if !ok || !ep.IPAddress.IsValid() {
		f.t.Fatalf("%s has no address on %s", n.name, net)
	}
	return ep.IPAddress.String()
}

// dialRedis dials a topology's server by the address Redis gives (a
// container's): through the port published on the host when there is one,
// directly otherwise.
func (f *fleet) dialRedis(ctx context.Context, network, addr string) (net.Conn, error) {
	f.topo.mu.Lock()
	to, ok := f.topo.addrs[addr]
	f.topo.mu.Unlock()
	if !ok {
		f.mapAddrs(ctx)
		f.topo.mu.Lock()
		to, ok = f.topo.addrs[addr]
		f.topo.mu.Unlock()
	}
	if !ok {
		to = addr
	}
	var d net.Dialer
	return d.DialContext(ctx, network, to)
}

// mapAddrs learns every node's container addresses and published port.
func (f *fleet) mapAddrs(ctx context.Context) {
	m := map[string]string{}
	all := append(append(append([]*redisNode{}, f.topo.nodes...), f.topo.sentinels...), f.topo.replicas...)
	if f.topo.master != nil {
		all = append(all, f.topo.master)
	}
	for _, n := range all {
		info, err := n.c.Inspect(ctx)
		if err != nil || info.State == nil || !info.State.Running {
			continue
		}
		host, err := n.c.Host(ctx)
		if err != nil {
			continue
		}
		p, err := n.c.MappedPort(ctx, n.port)
		if err != nil {
			continue
		}
		cport := strings.TrimSuffix(n.port, "/tcp")
		for _, ep := range info.NetworkSettings.Networks {
			if ep.IPAddress.IsValid() {
				m[net.JoinHostPort(ep.IPAddress.String(), cport)] = net.JoinHostPort(host, p.Port())
			}
		}
	}
	f.topo.mu.Lock()
	f.topo.addrs = m
	f.topo.mu.Unlock()
}

// nodeClient is a client of one server or sentinel alone, as the host
// reaches it; close it after use.
func (f *fleet) nodeClient(n *redisNode) *redis.Client {
	f.t.Helper()
	ctx := context.Background()
	host, err := n.c.Host(ctx)
	if err != nil {
		f.t.Fatalf("host of %s: %v", n.name, err)
	}
	p, err := n.c.MappedPort(ctx, n.port)
	if err != nil {
		f.t.Fatalf("published port of %s: %v", n.name, err)
	}
	return redis.NewClient(&redis.Options{
		Addr:         net.JoinHostPort(host, p.Port()),
		DialTimeout:  500 * time.Millisecond,
		ReadTimeout:  time.Second,
		WriteTimeout: time.Second,
		MaxRetries:   -1,
		PoolSize:     2,
	})
}

// on runs commands against one node with a short deadline.
func (f *fleet) on(n *redisNode, fn func(c *redis.Client, ctx context.Context) error) error {
	c := f.nodeClient(n)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return fn(c, ctx)
}

// must fails the test with what when err is not nil.
func (f *fleet) must(err error, what string) {
	f.t.Helper()
	if err != nil {
		f.t.Fatalf("%s: %v", what, err)
	}
}

// --- Sentinel ---

// startSentinel starts the master (on the side network only), two replicas
// and three sentinels (on both), makes the replicas replicate and the
// sentinels monitor the master, and waits until the sentinels know each
// other and both replicas.
func (f *fleet) startSentinel(ctx context.Context) {
	f.t.Helper()
	tp := &f.topo
	tp.side = f.core[:strings.LastIndex(f.core, "-b-core")] + "-c-side"
	if _, err := f.docker.NetworkCreate(ctx, tp.side, client.NetworkCreateOptions{
		Driver: "bridge",
		Labels: testcontainers.GenericLabels(),
	}); err != nil {
		f.t.Fatalf("create network %s: %v", tp.side, err)
	}
	f.networks = append(f.networks, tp.side)

	both := []string{f.core, tp.side}
	const ready = "Ready to accept connections"
	// Sentinel rewrites its config file: the container's shell writes one
	// it owns, then becomes the sentinel.
	sentinelScript := `printf 'port 26379\n' >/data/sentinel.conf && exec redis-server /data/sentinel.conf --sentinel`
	start := []func() (*redisNode, error){
		func() (*redisNode, error) {
			return f.runNode(ctx, "redis-m", redisPort, []string{tp.side}, ready, []string{"redis-server"}, serverArgs...)
		},
	}
	for i := range 2 {
		start = append(start, func() (*redisNode, error) {
			return f.runNode(ctx, fmt.Sprintf("redis-r%d", i+1), redisPort, both, ready, []string{"redis-server"}, serverArgs...)
		})
	}
	for i := range 3 {
		start = append(start, func() (*redisNode, error) {
			return f.runNode(ctx, fmt.Sprintf("s%d", i+1), sentinelPort, both, "Sentinel ID is", []string{"sh", "-c", sentinelScript})
		})
	}
	nodes := f.startNodes(ctx, start)
	tp.master, tp.replicas, tp.sentinels = nodes[0], nodes[1:3], nodes[3:]

	masterIP := f.ipOn(tp.master, tp.side)
	for _, r := range tp.replicas {
		coreIP := f.ipOn(r, f.core)
		f.must(f.on(r, func(c *redis.Client, ctx context.Context) error {
			if err := c.ConfigSet(ctx, "replica-announce-ip", coreIP).Err(); err != nil {
				return err
			}
			return c.Do(ctx, "REPLICAOF", masterIP, "6379").Err()
		}), "make "+r.name+" a replica")
	}
	f.waitFor(20*time.Second, "both replicas in sync", func() (bool, string) {
		var info string
		err := f.on(tp.master, func(c *redis.Client, ctx context.Context) error {
			var err error
			info, err = c.Info(ctx, "replication").Result()
			return err
		})
		return err == nil && strings.Count(info, "state=online") == 2, fmt.Sprint(info, err)
	})
	if tp.minReplicas > 0 {
		f.must(f.on(tp.master, func(c *redis.Client, ctx context.Context) error {
			if err := c.ConfigSet(ctx, "min-replicas-max-lag", "1").Err(); err != nil {
				return err
			}
			return c.ConfigSet(ctx, "min-replicas-to-write", strconv.Itoa(tp.minReplicas)).Err()
		}), "min-replicas-to-write on the master")
	}
	for _, s := range tp.sentinels {
		coreIP := f.ipOn(s, f.core)
		f.must(f.on(s, func(c *redis.Client, ctx context.Context) error {
			for _, cmd := range [][]any{
				{"SENTINEL", "CONFIG", "SET", "announce-ip", coreIP},
				{"SENTINEL", "MONITOR", masterName, masterIP, "6379", "2"},
				{"SENTINEL", "SET", masterName, "down-after-milliseconds", strconv.Itoa(int(downAfter.Milliseconds()))},
				// A failover the sentinels fail to agree on is retried after
				// twice this: keep it short on a loaded machine.
				{"SENTINEL", "SET", masterName, "failover-timeout", "3000"},
				{"SENTINEL", "SET", masterName, "parallel-syncs", "2"},
			} {
				if err := c.Do(ctx, cmd...).Err(); err != nil {
					return fmt.Errorf("%v: %w", cmd, err)
				}
			}
			return nil
		}), "configure sentinel "+s.name)
	}
	f.waitFor(30*time.Second, "the sentinels know each other and both replicas", func() (bool, string) {
		for _, s := range tp.sentinels {
			var detail string
			err := f.on(s, func(c *redis.Client, ctx context.Context) error {
				ss, err := c.Do(ctx, "SENTINEL", "SENTINELS", masterName).Slice()
				if err != nil {
					return err
				}
				rs, err := c.Do(ctx, "SENTINEL", "REPLICAS", masterName).Slice()
				if err != nil {
					return err
				}
				if len(ss) != 2 || len(rs) != 2 {
					detail = fmt.Sprintf("%s knows %d sentinels, %d replicas", s.name, len(ss), len(rs))
				}
				return nil
			})
			if err != nil || detail != "" {
				return false, fmt.Sprint(detail, err)
			}
		}
		return true, ""
	})
	var sentinelAddrs []string
	for _, s := range tp.sentinels {
		sentinelAddrs = append(sentinelAddrs, net.JoinHostPort(f.ipOn(s, f.core), "26379"))
	}
	f.hostRDB = &hostRedis{open: func() redis.UniversalClient {
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:    masterName,
			SentinelAddrs: sentinelAddrs,
			Dialer:        f.dialRedis,
			DialTimeout:   300 * time.Millisecond,
			ReadTimeout:   300 * time.Millisecond,
			WriteTimeout:  300 * time.Millisecond,
			MaxRetries:    -1,
			PoolSize:      4,
		})
	}}
	f.note("sentinel topology: master %s (%s), replicas %s, %s", tp.master.name, masterIP, tp.replicas[0].name, tp.replicas[1].name)
}

// sentinelMaster returns the master's address as the first sentinel that
// answers reports it.
func (f *fleet) sentinelMaster() (string, error) {
	var last error
	for _, s := range f.topo.sentinels {
		var addr string
		err := f.on(s, func(c *redis.Client, ctx context.Context) error {
			a, err := c.Do(ctx, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", masterName).StringSlice()
			if err == nil && len(a) == 2 {
				addr = net.JoinHostPort(a[0], a[1])
			}
			return err
		})
		if err == nil {
			return addr, nil
		}
		last = err
	}
	return "", last
}

// nodeAt returns the topology's node with address addr (a container's, as
// Redis gives it) on any network.
func (f *fleet) nodeAt(addr string) *redisNode {
	f.t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	for _, n := range append(append([]*redisNode{f.topo.master}, f.topo.replicas...), f.topo.nodes...) {
		if n == nil || strings.TrimSuffix(n.port, "/tcp") != port {
			continue
		}
		info, err := n.c.Inspect(context.Background())
		if err != nil {
			continue
		}
		for _, ep := range info.NetworkSettings.Networks {
			if ep.IPAddress.IsValid() && ep.IPAddress.String() == host {
				return n
			}
		}
	}
	f.t.Fatalf("no node of the topology has the address %s", addr)
	return nil
}

// waitSentinelFailover waits until the sentinels name a master other than
// old, and returns it with the time they first did.
func (f *fleet) waitSentinelFailover(old string, timeout time.Duration) (*redisNode, time.Time) {
	f.t.Helper()
	var addr string
	at := f.waitFor(timeout, "the sentinels promote a replica", func() (bool, string) {
		a, err := f.sentinelMaster()
		addr = a
		return err == nil && a != old, fmt.Sprintf("master %s %v", a, err)
	})
	n := f.nodeAt(addr)
	f.note("new master %s (%s)", n.name, addr)
	return n, at
}

// killNode kills a Redis node with SIGKILL.
func (f *fleet) killNode(n *redisNode) {
	f.t.Helper()
	f.note("SIGKILL %s", n.name)
	if _, err := f.docker.ContainerKill(context.Background(), n.c.GetContainerID(), client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		f.t.Fatalf("kill %s: %v", n.name, err)
	}
}

// disconnectNode and connectNode cut a Redis node from a network and join it
// again under its alias.
func (f *fleet) disconnectNode(c *testcontainers.DockerContainer, name, net string) {
	f.t.Helper()
	f.note("disconnect %s from %s", name, net)
	if _, err := f.docker.NetworkDisconnect(context.Background(), net, client.NetworkDisconnectOptions{Container: c.GetContainerID(), Force: true}); err != nil {
		f.t.Fatalf("disconnect %s: %v", name, err)
	}
}

// connectNode joins a Redis node to a network again under its alias.
func (f *fleet) connectNode(c *testcontainers.DockerContainer, name, net string) {
	f.t.Helper()
	f.note("connect %s to %s", name, net)
	if _, err := f.docker.NetworkConnect(context.Background(), net, client.NetworkConnectOptions{
		Container:      c.GetContainerID(),
		EndpointConfig: &network.EndpointSettings{Aliases: []string{name}},
	}); err != nil {
		f.t.Fatalf("connect %s: %v", name, err)
	}
}

// --- Cluster ---

// startCluster starts six nodes on the core network, joins them into a
// cluster (three masters, a replica each) and waits until every node sees
// it whole.
func (f *fleet) startCluster(ctx context.Context) {
	f.t.Helper()
	tp := &f.topo
	args := append(append([]string{}, serverArgs...),
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", strconv.Itoa(int(downAfter.Milliseconds())),
		// A replica whose link to its master has been down a while refuses
		// to stand (node timeout × this factor plus the replication ping
		// period): on a loaded machine that can leave a killed master's
		// slots without a master. 0: a replica always stands, as the
		// scenarios need a promotion to judge what the fleet does after it.
		"--cluster-replica-validity-factor", "0")
	var start []func() (*redisNode, error)
	for i := range 6 {
		start = append(start, func() (*redisNode, error) {
			return f.runNode(ctx, fmt.Sprintf("n%d", i+1), redisPort, []string{f.core}, "Ready to accept connections", []string{"redis-server"}, args...)
		})
	}
	tp.nodes = f.startNodes(ctx, start)
	// CLUSTER MEET takes addresses, not names: redis-cli in the first node
	// joins the nodes by their addresses on core.
	create := []string{"redis-cli", "--cluster", "create"}
	var addrs []string
	for _, n := range tp.nodes {
		a := net.JoinHostPort(f.ipOn(n, f.core), "6379")
		create = append(create, a)
		addrs = append(addrs, a)
	}
	create = append(create, "--cluster-replicas", "1", "--cluster-yes")
	code, out, err := tp.nodes[0].c.Exec(ctx, create, tcexec.Multiplexed())
	var text []byte
	if out != nil {
		text, _ = io.ReadAll(out)
	}
	if err != nil || code != 0 {
		f.t.Fatalf("redis-cli --cluster create: exit %d, %v\n%s", code, err, text)
	}
	f.waitFor(30*time.Second, "every node sees the cluster whole", func() (bool, string) {
		for _, n := range tp.nodes {
			var info string
			err := f.on(n, func(c *redis.Client, ctx context.Context) error {
				var err error
				info, err = c.ClusterInfo(ctx).Result()
				return err
			})
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:6") {
				return false, fmt.Sprintf("%s: %v %.120q", n.name, err, info)
			}
		}
		return true, ""
	})
	f.hostRDB = &hostRedis{open: func() redis.UniversalClient {
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:        addrs,
			Dialer:       f.dialRedis,
			DialTimeout:  300 * time.Millisecond,
			ReadTimeout:  300 * time.Millisecond,
			WriteTimeout: 300 * time.Millisecond,
			MaxRetries:   -1,
			PoolSize:     4,
		})
	}}
	f.note("cluster topology: %s", strings.Join(addrs, " "))
}

// slotNode is a node as CLUSTER SHARDS describes it.
type slotNode struct {
	id, ip, role string
	node         *redisNode
}

// slotOwner returns the master that serves slot as from sees it, or false
// when from does not answer or names none.
func (f *fleet) slotOwner(from *redisNode, slot int64) (slotNode, bool) {
	var owner slotNode
	err := f.on(from, func(c *redis.Client, ctx context.Context) error {
		shards, err := c.ClusterShards(ctx).Result()
		if err != nil {
			return err
		}
		for _, sh := range shards {
			for _, r := range sh.Slots {
				if slot < r.Start || slot > r.End {
					continue
				}
				for _, n := range sh.Nodes {
					if n.Role == "master" && n.Health == "online" {
						owner = slotNode{id: n.ID, ip: n.IP, role: n.Role}
					}
				}
			}
		}
		return nil
	})
	if err != nil || owner.id == "" {
		return slotNode{}, false
	}
	owner.node = f.nodeAt(net.JoinHostPort(owner.ip, "6379"))
	return owner, true
}

// nodeID returns a node's cluster id.
func (f *fleet) nodeID(n *redisNode) string {
	f.t.Helper()
	var id string
	f.must(f.on(n, func(c *redis.Client, ctx context.Context) error {
		var err error
		id, err = c.Do(ctx, "CLUSTER", "MYID").Text()
		return err
	}), "CLUSTER MYID on "+n.name)
	return id
}

// replicaOf returns the node that replicates master.
func (f *fleet) replicaOf(master *redisNode) *redisNode {
	f.t.Helper()
	id := f.nodeID(master)
	for _, n := range f.topo.nodes {
		if n == master {
			continue
		}
		var info string
		_ = f.on(n, func(c *redis.Client, ctx context.Context) error {
			var err error
			info, err = c.Do(ctx, "CLUSTER", "NODES").Text()
			return err
		})
		for _, line := range strings.Split(info, "\n") {
			fields := strings.Fields(line)
			if len(fields) > 3 && strings.Contains(fields[2], "myself") && strings.Contains(fields[2], "slave") && fields[3] == id {
				return n
			}
		}
	}
	f.t.Fatalf("no replica of %s", master.name)
	return nil
}

// waitReplicaInSync waits until rep's link to its master is up and its
// replication offset has reached the master's: a kill after that loses no
// write the master acknowledged.
func (f *fleet) waitReplicaInSync(master, rep *redisNode) {
	f.t.Helper()
	offset := func(n *redisNode, field string) (int64, string) {
		var info string
		if err := f.on(n, func(c *redis.Client, ctx context.Context) error {
			var err error
			info, err = c.Info(ctx, "replication").Result()
			return err
		}); err != nil {
			return -1, err.Error()
		}
		v := infoField(info, field)
		if field == "slave_repl_offset" && infoField(info, "master_link_status") != "up" {
			return -1, "master_link_status " + infoField(info, "master_link_status")
		}
		o, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return -1, fmt.Sprintf("%s=%q", field, v)
		}
		return o, ""
	}
	f.waitFor(30*time.Second, rep.name+" in sync with "+master.name, func() (bool, string) {
		m, why := offset(master, "master_repl_offset")
		if m < 0 {
			return false, master.name + ": " + why
		}
		r, why := offset(rep, "slave_repl_offset")
		if r < 0 {
			return false, rep.name + ": " + why
		}
		return r >= m, fmt.Sprintf("master offset %d, replica offset %d", m, r)
	})
}

// infoField returns the value of field in an INFO answer, "" when absent.
func infoField(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// clusterFailover waits for Redis Cluster to promote rep after its master
// was killed, and returns when rep became a master. Redis promises the
// promotion within a few node timeouts (failure detection, then an election
// that is retried); a machine busy with other scenarios can stretch that
// without bound, and the scenarios judge the fleet, not Redis. So when no
// promotion came within naturalFailover, the test promotes rep itself with
// CLUSTER FAILOVER TAKEOVER (no vote needed), as an operator would, and says
// so; the fleet sees the same promotion either way.
func (f *fleet) clusterFailover(rep *redisNode) time.Time {
	f.t.Helper()
	promoted := func() (bool, string) {
		r := f.role(rep)
		return r == "master", "role " + r
	}
	at, detail, ok := f.poll(naturalFailover, rep.name+" promoted", promoted)
	if ok {
		f.figure("failover_forced", 0)
		return at
	}
	f.note("%s not promoted after %v (%s): CLUSTER FAILOVER TAKEOVER", rep.name, naturalFailover, detail)
	f.figure("failover_forced", 1)
	f.must(f.on(rep, func(c *redis.Client, ctx context.Context) error {
		err := c.Do(ctx, "CLUSTER", "FAILOVER", "TAKEOVER").Err()
		if err != nil && f.role(rep) == "master" {
			return nil // promoted meanwhile
		}
		return err
	}), "CLUSTER FAILOVER TAKEOVER on "+rep.name)
	return f.waitFor(20*time.Second, rep.name+" promoted by TAKEOVER", promoted)
}

// naturalFailover is how long clusterFailover waits for Redis Cluster's own
// failover: failure detection within the node timeout, an election after
// 0.5 to 1 s, retried every four node timeouts (at least 4 s) when it gets
// too few votes. Ten node timeouts leaves room for two elections.
const naturalFailover = 10 * downAfter

// role returns ROLE's first word for n ("master", "slave"), "" when it does
// not answer.
func (f *fleet) role(n *redisNode) string {
	var role string
	_ = f.on(n, func(c *redis.Client, ctx context.Context) error {
		v, err := c.Do(ctx, "ROLE").Slice()
		if err == nil && len(v) > 0 {
			role, _ = v[0].(string)
		}
		return err
	})
	return role
}

// --- checks the failover scenarios add ---

// checkNeverBackwards fails the test when a replica answers a token issued
// before one it already answered (invariant 6), or a generation lower than
// one it already answered; and when no answer carries a generation.
func (f *fleet) checkNeverBackwards(res result) {
	f.t.Helper()
	index := map[string]int{}
	for i, tk := range res.stats.Tokens {
		index[tk.Token] = i
	}
	type high struct {
		tok, gen  int
		tokAt     time.Time
		genAt     time.Time
		generated bool
	}
	seen := map[string]*high{}
	withGen := 0
	c := &complaints{f: f}
	for _, s := range res.samples {
		if !s.ok() {
			continue
		}
		h := seen[s.replica]
		if h == nil {
			h = &high{tok: -1}
			seen[s.replica] = h
		}
		if i, ok := index[s.token]; ok {
			if i < h.tok {
				c.add("INVARIANT 6: a replica went back to an older token", "%s answered tok#%d at %s after tok#%d at %s", s.replica, i+1, f.tl.rel(s.sent), h.tok+1, f.tl.rel(h.tokAt))
			} else if i > h.tok {
				h.tok, h.tokAt = i, s.recv
			}
		}
		if s.generation == "" {
			continue
		}
		withGen++
		g, err := strconv.Atoi(s.generation)
		if err != nil {
			c.add("X-Tokenkeeper-Generation is not a number", "%s at %s: %q", s.replica, f.tl.rel(s.sent), s.generation)
			continue
		}
		if h.generated && g < h.gen {
			c.add("INVARIANT 6: a replica's generation went backwards", "%s answered generation %d at %s after %d at %s", s.replica, g, f.tl.rel(s.sent), h.gen, f.tl.rel(h.genAt))
		} else if !h.generated || g > h.gen {
			h.gen, h.genAt, h.generated = g, s.recv, true
		}
	}
	f.figure("answers_with_generation", withGen)
	if withGen == 0 {
		c.add("no X-Tokenkeeper-Generation", "none of %d answers carried the header", len(res.samples))
	}
	c.report()
}

// waitLeaderAgain waits until a replica other than not (nil: any) says it
// leads, and the lock, as the host reads it through the topology, names it
// and was written after since: its remaining TTL is longer than it could be
// had nobody renewed it since then (a lock replicated from a lost master
// names a leader that may not know it). It returns the replica and when.
func (f *fleet) waitLeaderAgain(since time.Time, not *replica, timeout time.Duration) (*replica, time.Time) {
	f.t.Helper()
	var r *replica
	at := f.waitFor(timeout, "a leader again", func() (bool, string) {
		var holder string
		var ttl time.Duration
		err := f.hostRDB.do(func(c redis.UniversalClient, ctx context.Context) error {
			v, err := c.Get(ctx, lockKey).Result()
			if err != nil {
				return err
			}
			holder = holderOf(v)
			ttl, err = c.PTTL(ctx, lockKey).Result()
			return err
		})
		if err != nil {
			return false, err.Error()
		}
		r = f.byName(holder)
		switch {
		case r == nil:
			return false, fmt.Sprintf("lock holder %q", holder)
		case r == not:
			return false, fmt.Sprintf("lock holder %s, the old leader", holder)
		case ttl <= f.tm.LockTTL-time.Since(since):
			return false, fmt.Sprintf("lock of %s not written since %s (ttl %v)", holder, f.tl.rel(since), ttl)
		}
		s, err := f.status(r)
		return err == nil && s.IsLeader, fmt.Sprintf("holder %s is_leader=%v %v", holder, s.IsLeader, err)
	})
	return r, at
}

// redisHolds returns the issued token Redis (through the topology) holds,
// and false with what it holds instead when that is none of them.
func (f *fleet) redisHolds() (fakeToken, bool, string) {
	v, err := f.hostRDB.dump(tokenKey)
	if err != nil {
		return fakeToken{}, false, err.Error()
	}
	for _, x := range f.stats().Tokens {
		if strings.Contains(v, x.Token) {
			return x, true, ""
		}
	}
	if v == "" {
		return fakeToken{}, false, "no token"
	}
	return fakeToken{}, false, "a token the upstream never issued"
}

// waitRedisHoldsAtLeast waits until Redis holds tk or a token issued after
// it, and returns when.
func (f *fleet) waitRedisHoldsAtLeast(tk fakeToken, timeout time.Duration) (time.Time, bool) {
	f.t.Helper()
	at, detail, ok := f.poll(timeout, "Redis holds "+f.tl.tokenName(tk.Token)+" or newer", func() (bool, string) {
		x, ok, detail := f.redisHolds()
		if !ok {
			return false, detail
		}
		return !x.IssuedAt.Before(tk.IssuedAt), "Redis holds " + f.tl.tokenName(x.Token)
	})
	if !ok {
		f.t.Errorf("after %v Redis does not hold %s or a newer token (last: %s)", timeout, f.tl.tokenName(tk.Token), detail)
	}
	return at, ok
}
