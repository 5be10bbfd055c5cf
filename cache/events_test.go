package cache_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// TestEventsServeEveryStore runs three tokens' stores on one Events, plain
// and sharded: each store follows its own token, on events alone (their
// poll is never due), and nothing else. Sharded pub/sub is used where the
// server has it (Redis 7), and plain pub/sub where it does not
// (miniredis), which the Events find out by themselves.
func TestEventsServeEveryStore(t *testing.T) {
	for _, sharded := range []bool{false, true} {
		t.Run("sharded="+strconv.FormatBool(sharded), func(t *testing.T) {
			srv := redistest.New(t)
			rdb := srv.Client(t)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			events := cache.NewEvents(rdb, cache.EventsConfig{Sharded: sharded, Logger: quiet})
			still := newClock()
			var stores []*cache.Store
			for range 3 {
				s, err := cache.New(rdb, cache.Config{Keys: cache.KeysFor(redistest.Name(t)), ServeMargin: time.Second,
					Clock: still, Logger: quiet, Events: events})
				if err != nil {
					t.Fatal(err)
				}
				stores = append(stores, s)
			}
			if _, err := cache.New(rdb, cache.Config{Keys: stores[0].Keys(), Events: events}); err == nil {
				t.Fatal("a second store on the same channel: got nil error, want one")
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for _, s := range stores {
					go s.Run(ctx)
				}
				events.Run(ctx)
			}()
			defer func() { cancel(); <-done }()

			for _, s := range stores {
				keys := s.Keys()
				testkit.Eventually(t, 10*time.Second, "subscribed", func() bool {
					plain, _ := rdb.PubSubNumSub(ctx, keys.Events).Result()
					shard, _ := rdb.PubSubShardNumSub(ctx, keys.Events).Result()
					return plain[keys.Events]+shard[keys.Events] == 1
				})
			}
			if got, want := events.Sharded(), sharded && redistest.Real(); got != want {
				t.Fatalf("Sharded() = %v, want %v (asked %v, real Redis %v)", got, want, sharded, redistest.Real())
			}
			if _, err := cache.New(rdb, cache.Config{Keys: cache.KeysFor(redistest.Name(t)), Events: events}); err == nil {
				t.Fatal("a store joining running events: got nil error, want one")
			}

			writer := func(s *cache.Store) *cache.Store {
				w, err := cache.New(rdb, cache.Config{Keys: s.Keys(), ServeMargin: time.Second, Logger: quiet, Events: cache.NewEvents(rdb, cache.EventsConfig{Sharded: events.Sharded()})})
				if err != nil {
					t.Fatal(err)
				}
				if err := rdb.Set(ctx, s.Keys().Lock, "holder", time.Minute).Err(); err != nil {
					t.Fatal(err)
				}
				return w
			}
			for i, s := range stores {
				v := "tok-" + strconv.Itoa(i)
				if _, err := writer(s).Write(ctx, cache.Write{LockValue: "holder", Value: v, Deadline: time.Now().Add(time.Minute)}); err != nil {
					t.Fatal(err)
				}
				testkit.Eventually(t, 10*time.Second, "store "+strconv.Itoa(i)+" follows its token", func() bool {
					got, ok := s.Current()
					return ok && got.Value == v
				})
				for j, o := range stores[i+1:] {
					if _, ok := o.Current(); ok {
						t.Fatalf("store %d holds a token before any was written for it", i+1+j)
					}
				}
			}
		})
	}
}

// TestGenerationOnlyGrows: each write stores one more than any generation
// before it, that of the key or the writer's, so a key lost and written
// back from memory goes on from where it was.
func TestGenerationOnlyGrows(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	s := f.store(t, cache.Config{ServeMargin: time.Second})
	f.lock(t, "holder")
	now := time.Now()
	for i, want := range []uint64{1, 2} {
		tok, err := s.Write(ctx, cache.Write{LockValue: "holder", Value: "tok-" + strconv.Itoa(i), Deadline: now.Add(time.Duration(i+1) * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if tok.Generation != want {
			t.Fatalf("write %d: generation %d, want %d", i+1, tok.Generation, want)
		}
	}
	if err := f.rdb.Del(ctx, f.keys.Token).Err(); err != nil { // an empty restart
		t.Fatal(err)
	}
	tok, err := s.Write(ctx, cache.Write{LockValue: "holder", Value: "tok-1", Deadline: now.Add(2 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Generation != 3 {
		t.Fatalf("written back after a loss: generation %d, want 3", tok.Generation)
	}
	reader := f.store(t, cache.Config{ServeMargin: time.Second})
	if _, err := reader.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := reader.Current(); got.Generation != 3 {
		t.Fatalf("read back: generation %d, want 3", got.Generation)
	}
}

// TestOlderTokenInRedisIsNotAdopted: a replica that holds a token never
// takes an older one from Redis (Behind says so); one that holds none
// takes what Redis has; Resync takes it whatever it holds.
func TestOlderTokenInRedisIsNotAdopted(t *testing.T) {
	// The older token may come back expiring sooner than the newer one, or
	// a little later as it may be dated: the expiries of two tokens fetched
	// close together are each cut by their own round trips. Its generation
	// tells.
	for _, restoredLife := range []time.Duration{time.Minute, 2*time.Minute + time.Second} {
		t.Run(restoredLife.String(), func(t *testing.T) { olderTokenInRedisIsNotAdopted(t, restoredLife) })
	}
}

func olderTokenInRedisIsNotAdopted(t *testing.T, restoredLife time.Duration) {
	f := newFixture(t)
	ctx := t.Context()
	f.lock(t, "holder")
	writer := f.store(t, cache.Config{ServeMargin: time.Second})
	now := time.Now()
	if _, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: "tok-old", Deadline: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	older, err := f.rdb.HGetAll(ctx, f.keys.Token).Result()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: "tok-new", Deadline: now.Add(2 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	reader := f.store(t, cache.Config{ServeMargin: time.Second})
	if _, err := reader.Load(ctx); err != nil {
		t.Fatal(err)
	}

	// Redis goes back to the older token.
	if err := f.rdb.Del(ctx, f.keys.Token).Err(); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.HSet(ctx, f.keys.Token, older).Err(); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.PExpire(ctx, f.keys.Token, restoredLife).Err(); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*cache.Store{"writer": writer, "reader": reader} {
		if _, err := s.Load(ctx); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Current(); got.Value != "tok-new" || !s.Behind() {
			t.Fatalf("%s after reading the older token: serving %q, behind %v; want tok-new, true", name, got.Value, s.Behind())
		}
	}
	// The leader writes the newer token back from memory, with the
	// generation it had: Redis takes it, however the two are dated.
	held, _ := writer.Current()
	if _, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: held.Value, Deadline: held.Deadline,
		FetchedAt: held.FetchedAt, Generation: held.Generation}); err != nil {
		t.Fatalf("writing the newer token back over the older one: %v", err)
	}
	if v, _ := f.rdb.HGet(ctx, f.keys.Token, "v").Result(); v != "tok-new" {
		t.Fatalf("Redis holds %q after the write-back, want tok-new", v)
	}
	// Redis goes back to the older token again.
	if err := f.rdb.Del(ctx, f.keys.Token).Err(); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.HSet(ctx, f.keys.Token, older).Err(); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.PExpire(ctx, f.keys.Token, restoredLife).Err(); err != nil {
		t.Fatal(err)
	}
	fresh := f.store(t, cache.Config{ServeMargin: time.Second})
	if _, err := fresh.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := fresh.Current(); got.Value != "tok-old" || fresh.Behind() {
		t.Fatalf("a replica holding nothing: serving %q, behind %v; want tok-old, false", got.Value, fresh.Behind())
	}
	if _, err := reader.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := reader.Current(); got.Value != "tok-old" || reader.Behind() {
		t.Fatalf("after Resync: serving %q, behind %v; want tok-old, false", got.Value, reader.Behind())
	}
}

// TestGenerationRestartedIsNewer: Redis loses everything and a replica
// that had seen no generation (just started) writes a new token, which
// expires minutes after the one the others hold, at generation 1. They
// take it: a lower generation says older only while the two expiries are
// as close as their datings can misorder them.
func TestGenerationRestartedIsNewer(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	f.lock(t, "holder")
	writer := f.store(t, cache.Config{ServeMargin: time.Second})
	now := time.Now()
	for i := range 3 {
		if _, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: "tok-" + strconv.Itoa(i), Deadline: now.Add(time.Duration(i+1) * time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	reader := f.store(t, cache.Config{ServeMargin: time.Second})
	if _, err := reader.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := reader.Current(); got.Generation != 3 {
		t.Fatalf("the reader holds generation %d, want 3", got.Generation)
	}
	if err := f.rdb.FlushAll(ctx).Err(); err != nil { // Redis restarts empty
		t.Fatal(err)
	}
	f.lock(t, "fresh")
	fresh := f.store(t, cache.Config{ServeMargin: time.Second})
	tok, err := fresh.Write(ctx, cache.Write{LockValue: "fresh", Value: "tok-new", Deadline: now.Add(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Generation != 1 {
		t.Fatalf("the fresh writer stored generation %d, want 1: the test proves nothing", tok.Generation)
	}
	if _, err := reader.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := reader.Current(); got.Value != "tok-new" || reader.Behind() {
		t.Fatalf("after the generation restarted: serving %q, behind %v; want tok-new, false", got.Value, reader.Behind())
	}
}

// TestReadAsOldAsTheWriteIsNoNews reads Redis, restored to an older token,
// at the very instant the newer token's write was answered: a read sent
// no later than that may have been served before the write, so it is no
// sign that Redis went back, and counts no episode. A read sent later is.
// (On fake time both happen in one instant; a coarse clock can do the
// same. Counted, the instant's read made one restore two episodes.)
func TestReadAsOldAsTheWriteIsNoNews(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		ctx := t.Context()
		keys := cache.KeysFor("liveness")
		srv.Mini.Set(keys.Lock, "holder")
		reg := testkit.NewMetrics()
		s, err := cache.New(srv.Client(t), cache.Config{Keys: keys, ServeMargin: time.Second, Clock: tl.Clock,
			Logger: quiet, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		now := tl.Now()
		if _, err := s.Write(ctx, cache.Write{LockValue: "holder", Value: "tok-old", Deadline: now.Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		older, err := srv.Client(t).HGetAll(ctx, keys.Token).Result()
		if err != nil {
			t.Fatal(err)
		}
		tl.Advance(time.Second)
		if _, err := s.Write(ctx, cache.Write{LockValue: "holder", Value: "tok-new", Deadline: now.Add(2 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		restore := func() {
			t.Helper()
			if _, err := srv.Client(t).TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.HSet(ctx, keys.Token, older)
				p.PExpire(ctx, keys.Token, time.Minute)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		anomalies := func() float64 {
			t.Helper()
			v, err := reg.Value("tokenkeeper_redis_anomalies_total", "kind", "token_older")
			if err != nil {
				t.Fatal(err)
			}
			return v
		}

		restore()
		if _, err := s.Load(ctx); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Current(); got.Value != "tok-new" || s.Behind() || anomalies() != 0 {
			t.Fatalf("read in the write's instant: serving %q, behind %v, token_older %v; want tok-new, false, 0",
				got.Value, s.Behind(), anomalies())
		}
		tl.Advance(time.Millisecond)
		if _, err := s.Load(ctx); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Current(); got.Value != "tok-new" || !s.Behind() || anomalies() != 1 {
			t.Fatalf("read a millisecond later: serving %q, behind %v, token_older %v; want tok-new, true, 1",
				got.Value, s.Behind(), anomalies())
		}
	})
}

// eventPair returns a writer holding the lock ("holder") and a running
// reader whose poll is never due, subscribed and past its first two reads
// (at start and after subscribing), which found no token and Redis's
// clock.
func eventPair(t *testing.T) (*fixture, *cache.Store, *cache.Store) {
	t.Helper()
	f := newFixture(t)
	writer := f.store(t, cache.Config{ServeMargin: time.Second, Instance: "w"})
	reader := f.store(t, cache.Config{ServeMargin: time.Second, PollInterval: time.Hour})
	run(t, reader)
	f.subscribed(t, 1)
	testkit.Eventually(t, 10*time.Second, "the first reads", func() bool { return reader.Loads() == 2 })
	f.lock(t, "holder")
	return f, writer, reader
}

// TestEventsCarryTheToken: a replica adopts each token from its event,
// without reading Redis, dated no later than Redis expires it and with its
// generation; its next poll reads it in full and keeps the earlier
// deadline.
func TestEventsCarryTheToken(t *testing.T) {
	_, writer, reader := eventPair(t)
	ctx := t.Context()
	for i, v := range []string{"tok-1", "tok-2", "tok-3"} {
		sent := time.Now()
		w, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: v, Deadline: sent.Add(time.Duration(i+1) * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		// Redis starts the time to live when the script runs, somewhere in
		// the write's round trip, less the longest round trip the writer
		// knew of (none before its first write): its expiry, which bounds
		// every reader's, is at most that round trip past the writer's.
		trip := time.Since(sent)
		testkit.Eventually(t, 10*time.Second, "reader follows "+v, func() bool {
			got, ok := reader.Current()
			return ok && got.Value == v
		})
		got, _ := reader.Held()
		if got.Deadline.After(w.Deadline.Add(trip)) {
			t.Fatalf("%s: the reader dates it %v later than its writer, more than the write's round trip %v",
				v, got.Deadline.Sub(w.Deadline), trip)
		}
		// The stored life is cut by the write's whole budget (see
		// writeBudget), which a retried send may take.
		if early := w.Deadline.Sub(got.Deadline); early > time.Second+writeBudget {
			t.Fatalf("%s: the reader dates it %v earlier than its writer", v, early)
		}
		if got.Generation != w.Generation || got.Writer != "w" {
			t.Fatalf("%s: generation %d from %q, want %d from w", v, got.Generation, got.Writer, w.Generation)
		}
	}
	if n := reader.Loads(); n != 2 {
		t.Fatalf("the reader read Redis %d times after its first reads, want none: the events carry the tokens", n-2)
	}
	// The next poll reads the token in full: never a later deadline.
	before, _ := reader.Held()
	if _, err := reader.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := reader.Held()
	if reader.Loads() != 3 || after.Value != before.Value || after.Deadline.After(before.Deadline) {
		t.Fatalf("after a poll: %d reads, %q until %v; want 3 reads, %q until at most %v",
			reader.Loads(), after.Value, after.Deadline, before.Value, before.Deadline)
	}
}

// TestEventsTheStoreCannotDateAreRead: an event whose token the replica
// cannot date safely, or that is older than the token it holds, makes it
// read Redis instead, which holds the real token; an event it can date is
// adopted as it is (the control).
func TestEventsTheStoreCannotDateAreRead(t *testing.T) {
	f, writer, reader := eventPair(t)
	ctx := t.Context()
	real, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: "real", Deadline: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "reader holds the real token", func() bool {
		got, ok := reader.Current()
		return ok && got.Value == "real"
	})
	for _, c := range []struct {
		name    string
		skew    time.Duration // of the event's Redis clock from Redis's
		ttl     time.Duration
		gen     uint64
		adopted bool
	}{
		{name: "Redis's clock ahead", skew: 10 * time.Minute, ttl: 2 * time.Hour, gen: real.Generation + 1},
		{name: "Redis's clock behind", skew: -10 * time.Minute, ttl: 2 * time.Hour, gen: real.Generation + 1},
		{name: "within the serve margin", ttl: time.Second, gen: real.Generation + 1},
		{name: "an older generation", ttl: 2 * time.Hour, gen: real.Generation - 1},
		{name: "datable", ttl: 2 * time.Hour, gen: real.Generation + 1, adopted: true},
	} {
		loads := reader.Loads()
		now := redisTime(t, f.rdb).Add(c.skew).UnixMilli()
		forged := "forged-" + strconv.Itoa(int(loads))
		payload := fmt.Sprintf(`{"type":"token","from":"x","tok":{"v":%q,"age":0,"exp":%d,"now":%d,"g":%d}}`,
			forged, now+c.ttl.Milliseconds(), now, c.gen)
		if err := f.rdb.Publish(ctx, f.keys.Events, payload).Err(); err != nil {
			t.Fatal(err)
		}
		if c.adopted {
			testkit.Eventually(t, 10*time.Second, c.name+": adopted", func() bool {
				got, ok := reader.Current()
				return ok && got.Value == forged
			})
			if reader.Loads() != loads {
				t.Fatalf("%s: read Redis for an event it could date", c.name)
			}
			continue
		}
		testkit.Eventually(t, 10*time.Second, c.name+": read Redis instead", func() bool { return reader.Loads() > loads })
		if got, _ := reader.Current(); got.Value != "real" {
			t.Fatalf("%s: serves %q, want the token Redis holds", c.name, got.Value)
		}
	}
}

// Resubscribe ends the subscription in use and makes a new one, after
// which every store reads Redis: a token written while the subscription
// was deaf (here: written without an event) is picked up at once, not at
// the next poll.
func TestResubscribeReadsRedisAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		keys := cache.KeysFor("liveness")
		// The writer publishes elsewhere: its write reaches the reader by
		// no event.
		silent := keys
		silent.Events += ":elsewhere"
		events, writer, reader := pairOnFakeTime(t, tl, srv, srv.Client(t), keys, silent)

		srv.Mini.Set(keys.Lock, "holder")
		if _, err := writer.Write(t.Context(), cache.Write{LockValue: "holder", Value: "tok", Deadline: tl.Now().Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		tl.Settle()
		if _, ok := reader.Current(); ok {
			t.Fatal("the reader holds the token before resubscribing: the test proves nothing")
		}
		events.Resubscribe()
		tl.Settle()
		if got, ok := reader.Current(); !ok || got.Value != "tok" {
			t.Fatalf("after Resubscribe the reader holds %q (%v), want tok at once", got.Value, ok)
		}
	})
}

// TestEventsOverAStaleRoundTripAreAdopted: a replica whose longest recent
// round trip dates from a busy moment dates an event by its arrival much
// earlier than by its reading of Redis's clock. It adopts the token, dated
// by the reading, instead of reading Redis at every refresh.
func TestEventsOverAStaleRoundTripAreAdopted(t *testing.T) {
	_, writer, reader := eventPair(t)
	const stale = time.Second // the fixture's read timeout, rttCut's cap
	cache.SetRTT(reader, stale)
	loads := reader.Loads()
	sent := time.Now()
	w, err := writer.Write(t.Context(), cache.Write{LockValue: "holder", Value: "tok", Deadline: sent.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	trip := time.Since(sent)
	testkit.Eventually(t, 10*time.Second, "the reader adopts tok", func() bool {
		got, ok := reader.Current()
		return ok && got.Value == "tok"
	})
	if n := reader.Loads() - loads; n != 0 {
		t.Fatalf("the reader read Redis %d times for an event it can date early", n)
	}
	got, _ := reader.Held()
	if got.Deadline.After(w.Deadline.Add(trip)) {
		t.Fatalf("the reader dates it %v later than its writer, more than the write's round trip %v", got.Deadline.Sub(w.Deadline), trip)
	}
	// Dated by the reading of Redis's clock, not early by the stale round
	// trip.
	if early := w.Deadline.Sub(got.Deadline); early > writeBudget+stale/2 {
		t.Fatalf("the reader dates it %v earlier than its writer, more than the write's budget %v: early by the stale round trip (%v)", early, writeBudget, stale)
	}
}

// TestEventsAfterASlowReadingAreAdopted: a replica whose last reading of
// Redis's clock waited long before Redis ran it (a fleet starting, its
// Redis queueing every replica's first reads) relates Redis's clock to
// its own early by that wait, and keeps the reading until its next full
// read. Its round trips measured short since, an event arriving at once
// is dated later by its arrival than by the reading, by about that wait.
// The store adopts it, dated by the reading (early, never late), instead
// of reading Redis: the discrepancy is the reading's own imprecision,
// which its round trip bounds. An event whose arrival dates it later than
// that (Redis's clock behind the one read) is still read.
func TestEventsAfterASlowReadingAreAdopted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		keys := cache.KeysFor("liveness")
		const wait = 3 * time.Second // before Redis runs the slow reading
		var slow atomic.Bool
		rdb := srv.Client(t)
		rdb.AddHook(redistest.OnCommand(func(cmd redis.Cmder) {
			switch cmd.Name() {
			case "evalsha_ro", "evalsha", "eval_ro", "eval":
				if slow.Load() {
					<-tl.Clock.NewTimer(wait).C()
				}
			}
		}))
		_, writer, reader := pairOnFakeTime(t, tl, srv, rdb, keys, keys)
		ctx := t.Context()
		srv.Mini.Set(keys.Lock, "holder")

		// The slow reading: sent now, run by Redis wait later.
		slow.Store(true)
		read := make(chan error, 1)
		go func() { _, err := reader.Load(ctx); read <- err }()
		tl.Advance(wait)
		if err := <-read; err != nil {
			t.Fatal(err)
		}
		slow.Store(false)
		cache.SetRTT(reader, time.Millisecond) // PONGs since measured the round trips short
		loads := reader.Loads()

		w, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: "tok", Deadline: tl.Now().Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		tl.Settle()
		got, ok := reader.Current()
		if !ok || got.Value != "tok" {
			t.Fatalf("the reader holds %q (%v), want tok from its event", got.Value, ok)
		}
		if n := reader.Loads() - loads; n != 0 {
			t.Fatalf("the reader read Redis %d times for an event its reading dates early by no more than the reading's round trip", n)
		}
		got, _ = reader.Held()
		if got.Deadline.After(w.Deadline) {
			t.Fatalf("the reader dates tok %v later than its writer", got.Deadline.Sub(w.Deadline))
		}
		// The stored life is cut by the write's budget; the reading dates
		// it early by up to its wait.
		if early := w.Deadline.Sub(got.Deadline); early > writeBudget+wait+time.Millisecond {
			t.Fatalf("the reader dates tok %v earlier than its writer, more than the write's budget %v and the reading's wait %v", early, writeBudget, wait)
		}

		// Redis's clock behind the one read by more than the reading's
		// round trip and eventSkew: read.
		now := redisTime(t, srv.Client(t)).Add(-wait - time.Second).UnixMilli()
		payload := fmt.Sprintf(`{"type":"token","from":"x","tok":{"v":"behind","age":0,"exp":%d,"now":%d,"g":%d}}`,
			now+2*time.Hour.Milliseconds(), now, got.Generation+1)
		if err := srv.Client(t).Publish(ctx, keys.Events, payload).Err(); err != nil {
			t.Fatal(err)
		}
		tl.Settle()
		if n := reader.Loads() - loads; n != 1 {
			t.Fatalf("the reader read Redis %d times for an event dated later by its arrival than the reading's round trip allows, want 1", n)
		}
		if got, _ := reader.Current(); got.Value != "tok" {
			t.Fatalf("the reader serves %q, want tok, the token Redis holds", got.Value)
		}
	})
}

// pairOnFakeTime runs, in tl's bubble until the test ends, a reader of
// keys on an Events over rdb, its poll never due, and returns them with a
// writer (instance "w", a client of its own) publishing on writerKeys'
// channel.
func pairOnFakeTime(t *testing.T, tl *testkit.Timeline, srv *redistest.Server, rdb *redis.Client, keys, writerKeys cache.Keys) (*cache.Events, *cache.Store, *cache.Store) {
	t.Helper()
	events := cache.NewEvents(rdb, cache.EventsConfig{Logger: quiet, Clock: tl.Clock})
	writer, err := cache.New(srv.Client(t), cache.Config{Keys: writerKeys, ServeMargin: time.Second, Clock: tl.Clock, Logger: quiet, Instance: "w"})
	if err != nil {
		t.Fatal(err)
	}
	reader, err := cache.New(rdb, cache.Config{Keys: keys, ServeMargin: time.Second, PollInterval: time.Hour, Clock: tl.Clock, Logger: quiet, Events: events})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { events.Run(ctx) })
	wg.Go(func() { reader.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	tl.Settle()
	return events, writer, reader
}
