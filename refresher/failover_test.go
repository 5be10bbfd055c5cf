package refresher_test

import (
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestNoReturnToAnOlderToken restores Redis to an older state under a
// running fleet, as a restart from an older snapshot or a failover to a
// replica that missed the last write does: Redis holds the previous token,
// still valid, and no lock. No replica goes back to it, and the leader
// writes the newer token back from memory, without asking the upstream,
// with a higher generation than any before.
func TestNoReturnToAnOlderToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		src := w.source(hour)
		rs := w.pairHolding(src)
		snapshot, err := w.admin.HGetAll(ctx, w.keys.Token).Result()
		if err != nil || snapshot["v"] == "" {
			t.Fatalf("token hash before the refresh: %v, %v", snapshot, err)
		}
		w.tl.Until("the second token everywhere", 2*hour, func() bool {
			return len(src.Calls()) == 2 && rs[0].holds("token-2") && rs[1].holds("token-2")
		})
		newer := "token-2"
		newerGen, _ := strconv.ParseUint(w.admin.HGet(ctx, w.keys.Token, "g").Val(), 10, 64)
		if newerGen != 2 {
			t.Fatalf("generation after two writes: got %d, want 2", newerGen)
		}

		// Redis comes back from the snapshot taken while it held the first
		// token: the older token, its expiry, and no lock.
		// One transaction, as a restore is: a leader that saw the token
		// gone between separate commands would write it back, and the
		// restore would then bury that write under the older token, a
		// second episode of its own.
		exp, _ := strconv.ParseInt(snapshot["exp"], 10, 64)
		if _, err := w.admin.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Del(ctx, w.keys.Token, w.keys.Lock)
			p.HSet(ctx, w.keys.Token, snapshot)
			p.PExpireAt(ctx, w.keys.Token, time.UnixMilli(exp))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		took := w.tl.Until("the newer token back in Redis", time.Minute, func() bool {
			for _, r := range rs {
				if !r.holds(newer) {
					got, _ := r.store.Held()
					t.Fatalf("%s serves %s, want the newer token throughout", r.name, got.Fingerprint())
				}
			}
			return w.admin.HGet(ctx, w.keys.Token, "v").Val() == newer
		})
		t.Logf("newer token written back after %v of fake time", took)
		if got := len(src.Calls()); got != 2 {
			t.Fatalf("upstream calls: got %d, want 2 (the write-back needs none)", got)
		}
		gen, _ := strconv.ParseUint(w.admin.HGet(ctx, w.keys.Token, "g").Val(), 10, 64)
		if gen <= newerGen {
			t.Fatalf("generation after the write-back: got %d, want more than %d", gen, newerGen)
		}
		w.tl.Until("every replica at the new generation", time.Minute, func() bool {
			for _, r := range rs {
				if tok, _ := r.store.Current(); tok.Generation != gen {
					return false
				}
			}
			return true
		})
		for _, r := range rs {
			if got := value(t, r.reg, "tokenkeeper_redis_anomalies_total", "kind", "token_older"); got > 1 {
				t.Errorf("%s: token_older anomalies = %v, want at most 1 (counted once per episode)", r.name, got)
			}
		}
	})
}
