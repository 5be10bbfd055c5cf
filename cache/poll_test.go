package cache_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// The polling promises of poll.go, on fake time: while a PING through the
// events' subscription is answered, a replica polls every
// RestPollInterval only, so an event lost with the connection alive waits
// for that poll; when the subscription stops answering, a lost event is
// caught within PollInterval of its write (the documented bound).

const (
	testPoll = 2 * time.Second
	testRest = time.Minute
)

// missedWrite writes a token whose event the reader cannot see (it is
// published on another channel), as an event lost on the way.
// silentWriter is a store of keys that publishes its writes where no
// reader listens: a reader learns of them only by polling.
func silentWriter(t *testing.T, tl *testkit.Timeline, srv *redistest.Server, keys cache.Keys) *cache.Store {
	t.Helper()
	silent := keys
	silent.Events += ":elsewhere"
	w, err := cache.New(srv.Client(t), cache.Config{Keys: silent, ServeMargin: time.Second, Clock: tl.Clock, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func missedWrite(t *testing.T, w *cache.Store, value string, deadline time.Time) {
	t.Helper()
	if _, err := w.Write(t.Context(), cache.Write{LockValue: "holder", Value: value, Deadline: deadline}); err != nil {
		t.Fatal(err)
	}
}

func TestEventsAliveMeansSlowPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		keys := cache.KeysFor("liveness")
		writer := silentWriter(t, tl, srv, keys)
		reader, err := cache.New(srv.Client(t), cache.Config{Keys: keys, ServeMargin: time.Second, PollInterval: testPoll,
			RestPollInterval: testRest, Clock: tl.Clock, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		start := tl.Now()
		run(t, reader)
		tl.Advance(testPoll)
		if !reader.EventsProven() {
			t.Fatal("the events are not proven alive a poll interval after subscribing to a Redis that answers PINGs")
		}
		srv.Mini.Set(keys.Lock, "holder")
		missedWrite(t, writer, "quiet", tl.Now().Add(time.Hour))
		loads := reader.Loads()
		// Proven from the first PING (5/8 of the poll interval), the
		// reader polls once more, at the poll interval, to catch up on
		// what its subscription may have missed before; then it rests.
		tl.Advance(start.Add(testPoll+testRest).Sub(tl.Now()) - time.Millisecond)
		if _, ok := reader.Current(); ok {
			t.Fatal("the reader polled before its rest interval although its events were proven alive")
		}
		if got := reader.Loads(); got != loads {
			t.Fatalf("the reader read Redis %d times at rest, want 0", got-loads)
		}
		tl.Advance(time.Millisecond)
		if got, ok := reader.Current(); !ok || got.Value != "quiet" {
			t.Fatalf("after its rest poll the reader holds %q (%v), want quiet", got.Value, ok)
		}
	})
}

func TestEventsInDoubtMeansShortPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		keys := cache.KeysFor("liveness")
		writer := silentWriter(t, tl, srv, keys)
		// The events' subscription goes over a link the test cuts; the
		// store's reads go straight to Redis.
		link := srv.NewLink(t)
		reader := followingStore(t, tl, srv.Client(t), link.Client(t), keys, "")
		tl.Advance(testPoll)
		if !reader.EventsProven() {
			t.Fatal("the events are not proven alive a poll interval after subscribing")
		}
		srv.Mini.Set(keys.Lock, "holder")

		link.Cut() // the subscription's PINGs go unanswered from now on
		for i, value := range []string{"first", "second", "third"} {
			deadline := tl.Now().Add(time.Duration(i+1) * time.Hour)
			missedWrite(t, writer, value, deadline)
			written := tl.Now()
			tl.Advance(testPoll)
			if got, ok := reader.Current(); !ok || got.Value != value {
				t.Fatalf("a poll interval after a write missed with the events in doubt, the reader holds %q (%v), want %q", got.Value, ok, value)
			}
			if reader.EventsProven() {
				t.Fatal("the events are proven alive through a cut link")
			}
			// The next write falls anywhere in the poll's cycle.
			tl.Advance(written.Add(testPoll + time.Duration(i+1)*testPoll/3).Sub(tl.Now()))
		}

		// Healed: proven again, and the polls slow down.
		link.Restore()
		tl.Advance(2 * testPoll)
		if !reader.EventsProven() {
			t.Fatal("the events are not proven alive again after the link healed")
		}
		missedWrite(t, writer, "fourth", tl.Now().Add(4*time.Hour))
		tl.Advance(3 * testPoll)
		if got, _ := reader.Current(); got.Value == "fourth" {
			t.Fatal("the reader still polls every poll interval with its events proven alive again")
		}
	})
}

// A leader's store (PollOften) is polled every poll interval whatever
// its events prove: a token that vanished from Redis publishes nothing.
func TestPollOftenNoticesALostToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		keys := cache.KeysFor("liveness")
		s, err := cache.New(srv.Client(t), cache.Config{Keys: keys, ServeMargin: time.Second, PollInterval: testPoll,
			RestPollInterval: testRest, Clock: tl.Clock, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		srv.Mini.Set(keys.Lock, "holder")
		if _, err := s.Write(t.Context(), cache.Write{LockValue: "holder", Value: "tok", Deadline: tl.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		s.PollOften(true)
		run(t, s)
		tl.Advance(testPoll)
		if !s.EventsProven() || !s.InRedis() {
			t.Fatalf("proven %v, in Redis %v; want both", s.EventsProven(), s.InRedis())
		}
		srv.Mini.Del(keys.Token) // evicted: no event
		tl.Advance(testPoll)
		if s.InRedis() {
			t.Fatal("a store polled often did not notice within a poll interval that its token left Redis")
		}
	})
}

// followingStore makes a store of keys for instance on tl's clock, with
// the poll tests' intervals, reading Redis through rdb and following its
// events through eventsRdb, and runs both until the test ends.
func followingStore(t *testing.T, tl *testkit.Timeline, rdb, eventsRdb *redis.Client, keys cache.Keys, instance string) *cache.Store {
	t.Helper()
	events := cache.NewEvents(eventsRdb, cache.EventsConfig{Clock: tl.Clock, Logger: quiet})
	s, err := cache.New(rdb, cache.Config{Keys: keys, ServeMargin: time.Second, PollInterval: testPoll,
		RestPollInterval: testRest, Instance: instance, Clock: tl.Clock, Logger: quiet, Events: events})
	if err != nil {
		t.Fatal(err)
	}
	runEvents(t, events)
	run(t, s)
	return s
}

func runEvents(t *testing.T, e *cache.Events) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}
