package httpapi

import (
	"crypto/sha256"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// maxAddrBuckets bounds the buckets kept for anonymous clients; past it
// they are all dropped and start again full.
const maxAddrBuckets = 10000

// limits rate-limits requests per key with token buckets, and anonymous
// requests per client address. Buckets are per replica: a fleet of N
// replicas behind a balancer admits about N times the rate per key,
// unless the limit is fleet-wide (newFleetLimits): then each replica's
// key buckets hold its share of the fleet's rate.
type limits struct {
	off   bool
	every rate.Limit
	burst int

	// fleet is the fleet-wide rate per key, 0 when the limit is per
	// replica; replicas the count it is shared among now.
	fleet    float64
	replicas atomic.Int64

	keys map[[sha256.Size]byte]*rate.Limiter // one per configured key; read-only after New

	mu    sync.Mutex
	addrs map[string]*rate.Limiter
}

// newLimits makes a bucket for each key of each set. perSecond == 0 turns
// limiting off.
func newLimits(perSecond float64, burst int, sets ...keySet) *limits {
	if perSecond <= 0 {
		return &limits{off: true}
	}
	l := &limits{
		every: rate.Limit(perSecond),
		burst: burst,
		keys:  make(map[[sha256.Size]byte]*rate.Limiter),
		addrs: make(map[string]*rate.Limiter),
	}
	for _, ks := range sets {
		for _, d := range ks.digests {
			if l.keys[d] == nil {
				l.keys[d] = rate.NewLimiter(l.every, l.burst)
			}
		}
	}
	return l
}

// newFleetLimits makes a bucket for each key of each set that holds the
// fleet-wide rate fleet, as if this replica were the only one, until
// share says otherwise; anonymous clients keep the per-replica rate
// perSecond (0: no limit for them) and burst.
func newFleetLimits(fleet, perSecond float64, burst int, sets ...keySet) *limits {
	l := &limits{
		every: rate.Limit(perSecond),
		burst: burst,
		fleet: fleet,
		keys:  make(map[[sha256.Size]byte]*rate.Limiter),
		addrs: make(map[string]*rate.Limiter),
	}
	if perSecond <= 0 {
		l.every, l.burst = rate.Inf, 1
	}
	l.replicas.Store(1)
	l.add(sets...)
	return l
}

// add makes a bucket for each key of sets that has none yet. Call it
// before the server answers requests.
func (l *limits) add(sets ...keySet) {
	if l.off {
		return
	}
	for _, ks := range sets {
		for _, d := range ks.digests {
			if l.keys[d] == nil {
				l.keys[d] = l.newKeyBucket()
			}
		}
	}
}

func (l *limits) newKeyBucket() *rate.Limiter {
	if l.fleet > 0 {
		r, b := l.shareOf(l.replicas.Load())
		return rate.NewLimiter(r, b)
	}
	return rate.NewLimiter(l.every, l.burst)
}

// shareOf is one replica's rate and burst when n share the fleet's rate:
// a second's worth of its rate as the burst.
func (l *limits) shareOf(n int64) (rate.Limit, int) {
	r := l.fleet / float64(n)
	return rate.Limit(r), max(1, int(r))
}

// share sets each key bucket to this replica's share of the fleet-wide
// rate among n replicas from now on, and reports whether the limit is
// fleet-wide.
func (l *limits) share(n int, now time.Time) bool {
	if l.fleet <= 0 {
		return false
	}
	if l.replicas.Swap(int64(n)) == int64(n) {
		return true
	}
	r, b := l.shareOf(int64(n))
	for _, k := range l.keys {
		k.SetLimitAt(now, r)
		k.SetBurstAt(now, b)
	}
	return true
}

// allowKey takes a token at now from the bucket of the key with this
// digest.
func (l *limits) allowKey(digest *[sha256.Size]byte, now time.Time) error {
	if l.off {
		return nil
	}
	if b := l.keys[*digest]; b != nil && !b.AllowN(now, 1) {
		return errRateLimited
	}
	return nil
}

// allowAddr takes a token from the bucket of the client at remoteAddr
// (host:port; the port is ignored).
func (l *limits) allowAddr(remoteAddr string) error {
	if l.off {
		return nil
	}
	if l.every == rate.Inf {
		return nil
	}
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	l.mu.Lock()
	b := l.addrs[host]
	if b == nil {
		if len(l.addrs) >= maxAddrBuckets {
			clear(l.addrs)
		}
		b = rate.NewLimiter(l.every, l.burst)
		l.addrs[host] = b
	}
	l.mu.Unlock()
	if !b.Allow() {
		return errRateLimited
	}
	return nil
}

// SetReplicas tells the server how many replicas share the fleet-wide
// rate limit now (Security.FleetRateLimit); fewer than one counts as one.
// Call it from a background read of the fleet, never per request. It is
// safe for concurrent use, and does nothing without a fleet-wide limit.
func (s *Server) SetReplicas(n int) {
	n = max(n, 1)
	if s.limits.share(n, s.now()) {
		s.guard.replicas.Set(float64(n))
	}
}
