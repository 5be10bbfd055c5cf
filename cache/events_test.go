package cache_test

import (
	"context"
	"strconv"
	"testing"
	"time"

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
	if err := f.rdb.PExpire(ctx, f.keys.Token, time.Minute).Err(); err != nil {
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
