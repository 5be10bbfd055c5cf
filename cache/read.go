package cache

// The read path: a store reads the token from Redis (loads, polls,
// resyncs), dates it on its clock and adopts it unless it is older.

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/internal/plant"
)

//go:embed lua/read.lua
var readLua string

// readScript (lua/read.lua) returns the token, its remaining
// milliseconds, its age in milliseconds, its writer, its key id, its
// generation and Redis's clock (Unix ms), read in one step so the
// remaining time belongs to the token read; {'!', error} when the key
// holds no hash; an empty token and Redis's clock when it holds none.
var readScript = redis.NewScript(readLua)

// Load reads the token from Redis and adopts it when it differs from the
// copy in memory. It reports whether Redis held a token. When Redis holds
// none, or cannot be reached, the copy in memory is kept.
func (s *Store) Load(ctx context.Context) (bool, error) { return s.load(ctx, false) }

// Resync is Load for when Redis has just refused the copy in memory as
// older than the token it holds (ErrStale): it adopts the stored token
// even if, estimated from here, it seems to expire sooner.
func (s *Store) Resync(ctx context.Context) (bool, error) { return s.load(ctx, true) }

func (s *Store) load(ctx context.Context, resync bool) (bool, error) {
	s.loads.Add(1)
	sent := s.cfg.Clock.Now()
	res, err := s.runRO(ctx, readScript, []string{s.cfg.Keys.Token}).Slice()
	if err != nil {
		return false, fmt.Errorf("cache: read token: %w", err)
	}
	rtt := s.noteRTT(sent)
	if len(res) == 2 {
		// The key holds something else than a token: no token, as far as
		// the fleet is concerned; the leader overwrites it under the lock.
		s.inRedis.Store(false)
		s.metrics.anomaly(anomalyWrongType)
		return false, fmt.Errorf("%w: %s is not a hash (%v); the leader overwrites it", ErrWrongType, s.cfg.Keys.Token, res[1])
	}
	if len(res) != 7 {
		return false, fmt.Errorf("cache: read token: unexpected answer of %d fields", len(res))
	}
	value, _ := res[0].(string)
	pttl, _ := res[1].(int64)
	age, _ := res[2].(int64)
	writer, _ := res[3].(string)
	keyID, _ := res[4].(string)
	gen, _ := res[5].(int64)
	if redisNow, _ := res[6].(int64); redisNow > 0 {
		s.clockRef.Store(&redisClock{sent: sent, ms: redisNow, rtt: rtt})
	}
	if value == "" || pttl <= 0 {
		s.lost(sent)
		return false, nil
	}
	s.inRedis.Store(true)
	if keyID != "" {
		if s.cfg.Keyring == nil {
			err := fmt.Errorf("%w %q: this replica has no encryption keys (TOKENKEEPER_ENCRYPTION_KEYS)", errNoKey, keyID)
			s.sealErr.Store(&err)
			return true, err
		}
		if value, err = s.cfg.Keyring.open(keyID, value, s.cfg.Keys.Token); err != nil {
			s.sealErr.Store(&err)
			return true, err
		}
	}
	s.sealErr.Store(nil)
	s.adoptRead(Token{
		Value:      value,
		Deadline:   sent.Add(time.Duration(pttl) * time.Millisecond),
		FetchedAt:  sent.Add(-time.Duration(age) * time.Millisecond),
		Writer:     writer,
		Generation: uint64(max(gen, 0)),
	}, sent, resync)
	return true, nil
}

// runRO runs a script that only reads with EVALSHA_RO, which Redis still
// serves while writes are paused (CLIENT PAUSE WRITE, during a failover)
// and on read-only replicas; a server older than Redis 7 that lacks it
// gets the script with EVALSHA from then on, and so does a user whose ACL
// lacks EVALSHA_RO.
func (s *Store) runRO(ctx context.Context, script *redis.Script, keys []string, args ...any) *redis.Cmd {
	if !s.noRO.Load() {
		cmd := script.RunRO(ctx, s.rdb, keys, args...)
		err := cmd.Err()
		switch {
		case err == nil:
			return cmd
		case strings.Contains(strings.ToLower(err.Error()), "unknown command"),
			// Redis-compatible servers that count TIME as a write.
			strings.Contains(err.Error(), "not allowed in read-only scripts"):
		case strings.HasPrefix(err.Error(), "NOPERM") && strings.Contains(strings.ToLower(err.Error()), "evalsha_ro"):
			s.log.Info("Redis refuses EVALSHA_RO to this user: reading with EVALSHA, which waits while writes are paused; grant +evalsha_ro +eval_ro")
		default:
			return cmd
		}
		s.noRO.Store(true)
	}
	return script.Run(ctx, s.rdb, keys, args...)
}

// lost records that Redis held no token at sent. When the last read found
// one and the copy in memory still had well over a second to live, the key
// was removed before its expiry (eviction under maxmemory, FLUSHALL, a
// restart without persistence, a failover to a replica that missed it):
// that is logged and counted, since an operator must fix its cause.
func (s *Store) lost(sent time.Time) {
	t := s.cur.Load()
	if t != nil && sent.Before(t.seen) {
		return // a later observation found a token
	}
	if !s.inRedis.Swap(false) {
		return
	}
	if t != nil && t.Deadline.Sub(sent) > time.Second {
		s.metrics.anomaly(anomalyTokenLost)
		s.log.Warn("the token vanished from Redis before its expiry: Redis evicted it (check maxmemory-policy: "+
			"use noeviction or a volatile-* policy), was flushed, or restarted empty; the leader writes it back from memory",
			"key", s.cfg.Keys.Token, "fingerprint", t.Fingerprint(), "expires_in", t.Remaining(sent).Round(time.Second))
	}
}

// LockLost records that the lock key vanished before its TTL ran out
// (eviction, flush, restart), which the refresher finds when a renewal is
// refused and nobody else holds the lock. It counts it and logs why it
// matters.
func (s *Store) LockLost() {
	s.metrics.anomaly(anomalyLockLost)
	s.log.Warn("the leader lock vanished from Redis before its TTL: Redis evicted it (check maxmemory-policy: "+
		"use noeviction or a volatile-* policy), was flushed, or restarted empty", "key", s.cfg.Keys.Lock)
}

// adoptRead adopts t, read from Redis by a command sent at seen, unless
// the copy in memory is a different token that expires later or has a
// higher generation (every write stores one more than any seen before;
// the expiries of two tokens fetched close together can be dated the
// wrong way round, each cut by its own round trips): Redis then
// holds an older token than one this replica has served (a failover to a
// replica that missed the last write, a restore from a snapshot), which no
// replica goes back to. Behind reports it, so that the leader writes the
// newer token back from memory.
func (s *Store) adoptRead(t Token, seen time.Time, resync bool) {
	if old := s.cur.Load(); !resync && !plant.On(plant.AdoptOlder) && old != nil && old.Value != t.Value &&
		s.older(t, old.Token) && old.Remaining(s.cfg.Clock.Now()) > 0 {
		if !seen.After(old.seen) {
			// Sent no later than the newer token was seen: it may have
			// been served before that token was written, which is no news.
			return
		}
		if !s.behind.Swap(true) {
			s.metrics.anomaly(anomalyTokenOlder)
			s.log.Warn("Redis holds an older token than this replica: keeping the newer one; the leader writes it back "+
				"(a failover to a replica that missed the last write, or a restore from an older snapshot)",
				"key", s.cfg.Keys.Token, "held", old.Fingerprint(), "held_generation", old.Generation,
				"in_redis", t.Fingerprint(), "in_redis_generation", t.Generation,
				"in_redis_expires_sooner_by", old.Deadline.Sub(t.Deadline).Round(time.Millisecond))
		}
		return
	}
	s.behind.Store(false)
	s.adopt(t, seen)
}

// older reports whether t is an older token than held: it expires
// earlier, or it has a lower generation and expires no later than the
// dating of two tokens written close together can misorder them (each
// stored life is cut by its write's budget, each reading dated early by
// up to a round trip: twice the read timeout, 5 s at least). A token
// of a lower generation that expires later than that is newer: Redis lost
// everything (a restart empty, a flush) and a writer that had seen no
// generation, a replica just started, counted again from one.
func (s *Store) older(t, held Token) bool {
	if t.Deadline.Before(held.Deadline) {
		return true
	}
	misdated := max(2*s.rttCap, 5*time.Second)
	return t.Generation > 0 && t.Generation < held.Generation && !t.Deadline.After(held.Deadline.Add(misdated))
}

// ReadTimeout returns the read timeout of rdb, a go-redis client: a
// command is answered within it or fails. 0 when unknown or unbounded.
// A write's stored life is cut by it (go-redis may send the write again
// within it); the device minter cuts its stores the same way.
func ReadTimeout(rdb any) time.Duration {
	var d time.Duration
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		d = c.Options().ReadTimeout
	case interface{ Options() *redis.Options }:
		d = c.Options().ReadTimeout
	default:
		return 0
	}
	switch {
	case d == 0:
		return 3 * time.Second // go-redis's default
	case d < 0:
		return 0
	}
	return d
}

// noteRTT records the round trip of a command sent at sent, answered
// now, and returns it: rtt keeps the longest, decaying by a quarter with
// each shorter one.
func (s *Store) noteRTT(sent time.Time) time.Duration {
	d := s.cfg.Clock.Now().Sub(sent)
	for {
		old := s.rtt.Load()
		v := max(int64(d), old-old/4)
		if v == old || s.rtt.CompareAndSwap(old, v) {
			return d
		}
	}
}

// rttCut is the longest recent round trip to Redis, bounded by the
// client's read timeout: a round trip that counted retries and
// reconnections is longer than any command's delay, which the read
// timeout bounds.
func (s *Store) rttCut() time.Duration {
	cut := time.Duration(s.rtt.Load())
	if s.rttCap > 0 {
		cut = min(cut, s.rttCap)
	}
	return cut
}

// Behind reports whether the last read of Redis found an older token than
// the copy in memory, which is kept.
func (s *Store) Behind() bool { return s.behind.Load() }

// adopt installs t, observed in Redis by a command sent at seen, as the
// copy in memory. Reads and writes run concurrently and their answers may
// come back in any order: a different token observed before the one held
// is older news and is dropped, so an answer that was slow to arrive never
// takes a replica back to the token it has just replaced. The same token
// seen again keeps the earlier of the two deadlines, so repeated reads
// never stretch it, and the higher generation.
func (s *Store) adopt(t Token, seen time.Time) {
	h := &held{Token: t, seen: seen}
	for {
		old := s.cur.Load()
		if old != nil && old.Value != t.Value && seen.Before(old.seen) {
			return
		}
		if old != nil && old.Value == t.Value {
			if !t.Deadline.Before(old.Deadline) && t.Generation <= old.Generation {
				return
			}
			if old.Deadline.Before(h.Deadline) {
				h.Deadline = old.Deadline
			}
			h.Generation = max(h.Generation, old.Generation)
			if old.seen.After(seen) {
				h.seen = old.seen
			}
		}
		if s.cur.CompareAndSwap(old, h) {
			if old == nil || old.Value != t.Value {
				s.log.Info("token adopted", "fingerprint", t.Fingerprint(), "generation", t.Generation,
					"expires_in", t.Remaining(s.cfg.Clock.Now()).Round(time.Second), "writer", t.Writer)
				s.noteReadiness()
			}
			return
		}
	}
}

// Poll keeps the copy in memory current at the least cost to Redis: it
// reads the stored token's expiry (one HGET), and does a full Load only
// when that expiry differs from the one seen before the last successful
// Load, or Redis holds no token. Every write of a new token stores a later
// expiry, so an unchanged expiry means an unchanged token. It reports
// whether Redis held a token. (The events' poll reads the stamps of every
// store of a replica at once instead.)
func (s *Store) Poll(ctx context.Context) (bool, error) {
	sent := s.cfg.Clock.Now()
	exp, err := s.rdb.HGet(ctx, s.cfg.Keys.Token, "exp").Result()
	switch {
	case err == nil:
		return s.pollAnswer(ctx, exp, true, sent, nil)
	case errors.Is(err, redis.Nil), isWrongType(err):
		return s.pollAnswer(ctx, "", false, sent, nil)
	}
	return s.pollAnswer(ctx, "", false, sent, err)
}

// pollAnswer acts on a poll sent at sent that found the stored expiry exp
// (found false: none), or failed with err: a full Load when the expiry
// is not the one seen before the last successful Load.
func (s *Store) pollAnswer(ctx context.Context, exp string, found bool, sent time.Time, err error) (bool, error) {
	if err != nil {
		return false, fmt.Errorf("cache: poll token: %w", err)
	}
	s.noteRTT(sent)
	if !found {
		exp = ""
	}
	if seen := s.polled.Load(); exp != "" && seen != nil && *seen == exp && s.inRedis.Load() && s.sealErr.Load() == nil {
		return true, nil
	}
	ok, err := s.Load(ctx)
	if ok && err == nil {
		s.polled.Store(&exp)
	} else {
		s.polled.Store(nil)
	}
	return ok, err
}

func (s *Store) loadLogged(ctx context.Context) error { return s.logRead(ctx, s.Load) }

// logRead runs read, logs its failure and returns it.
func (s *Store) logRead(ctx context.Context, read func(context.Context) (bool, error)) error {
	_, err := read(ctx)
	switch {
	case err == nil, ctx.Err() != nil:
	case errors.Is(err, errNoKey), errors.Is(err, errDecrypt):
		s.log.Error("the token in Redis cannot be decrypted by this replica: not serving it; check TOKENKEEPER_ENCRYPTION_KEYS", "error", err)
	case errors.Is(err, ErrWrongType):
		s.log.Error("the token key in Redis holds a foreign value; it is treated as no token and overwritten by the leader: "+
			"find what writes to it (keys under tokenkeeper:{...} belong to tokenkeeper)", "error", err)
	default:
		if t, ok := s.Current(); ok {
			s.log.Warn("reading token from Redis failed; serving the copy in memory", "error", err,
				"fingerprint", t.Fingerprint(), "servable_for", (t.Remaining(s.cfg.Clock.Now()) - s.cfg.ServeMargin).Round(time.Millisecond))
		} else {
			s.log.Warn("reading token from Redis failed, and this replica holds no servable token: not serving", "error", err)
		}
	}
	return err
}

// isWrongType reports whether err is Redis's WRONGTYPE error.
func isWrongType(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE")
}
