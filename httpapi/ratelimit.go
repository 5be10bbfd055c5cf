package httpapi

import (
	"crypto/sha256"
	"net"
	"sync"

	"golang.org/x/time/rate"
)

// maxAddrBuckets bounds the buckets kept for anonymous clients; past it
// they are all dropped and start again full.
const maxAddrBuckets = 10000

// limits rate-limits requests per key with token buckets, and anonymous
// requests per client address. Buckets are per replica: a fleet of N
// replicas behind a balancer admits about N times the rate per key.
type limits struct {
	off   bool
	every rate.Limit
	burst int

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

// allowKey takes a token from the bucket of the key with this digest.
func (l *limits) allowKey(digest *[sha256.Size]byte) error {
	if l.off {
		return nil
	}
	if b := l.keys[*digest]; b != nil && !b.Allow() {
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
