package cache_test

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// The promises of beat.go, on fake time: a leader's beats prove the
// followers' subscriptions alive and announce its leases, so that a
// follower at rest sends Redis nothing, whatever the number of tokens;
// they stop when the leader stops leading, and the follower PINGs again.

// beatFleet is a leader and a follower keeping tokens over one Redis,
// each with its own events; the follower's reads and events go through a
// link that counts what it sends.
type beatFleet struct {
	leader, follower []*cache.Store
	link             *redistest.Link
}

func newBeatFleet(t *testing.T, tl *testkit.Timeline, srv *redistest.Server, n int, rest time.Duration) *beatFleet {
	t.Helper()
	f := &beatFleet{link: srv.NewLink(t)}
	lrdb, frdb := srv.Client(t), f.link.Client(t)
	le := cache.NewEvents(lrdb, cache.EventsConfig{Clock: tl.Clock, Logger: quiet})
	fe := cache.NewEvents(frdb, cache.EventsConfig{Clock: tl.Clock, Logger: quiet})
	for i := range n {
		keys := cache.KeysFor(fmt.Sprintf("beat-%d", i))
		l, err := cache.New(lrdb, cache.Config{Keys: keys, ServeMargin: time.Second, PollInterval: testPoll, RestPollInterval: rest,
			Instance: "leader", Clock: tl.Clock, Logger: quiet, Events: le})
		if err != nil {
			t.Fatal(err)
		}
		fs, err := cache.New(frdb, cache.Config{Keys: keys, ServeMargin: time.Second, PollInterval: testPoll, RestPollInterval: rest,
			Instance: "follower", Clock: tl.Clock, Logger: quiet, Events: fe})
		if err != nil {
			t.Fatal(err)
		}
		f.leader, f.follower = append(f.leader, l), append(f.follower, fs)
	}
	runEvents(t, le)
	runEvents(t, fe)
	for i := range n {
		run(t, f.leader[i])
		run(t, f.follower[i])
	}
	return f
}

// lead has the leader announce every token's lease until until.
func (f *beatFleet) lead(until time.Time) {
	for _, s := range f.leader {
		s.Lead(until)
	}
}

func TestFollowerAtRestSendsNothing(t *testing.T) {
	for _, n := range []int{1, 30} {
		t.Run(fmt.Sprintf("%d tokens", n), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tl, srv := onFakeTime(t)
				const rest = time.Hour
				f := newBeatFleet(t, tl, srv, n, rest)
				f.lead(tl.Now().Add(2 * rest))
				// Started: each store reads Redis, and polls once to catch
				// up on what it may have missed before its proof.
				tl.Advance(2 * testPoll)
				sent := f.link.Writes()
				for range 30 {
					tl.Advance(time.Minute)
					for i, s := range f.follower {
						if !s.EventsProven() {
							t.Fatalf("token %d: the follower's events are not proven alive with a leader beating", i)
						}
						holder, until := s.LockHint()
						if holder != "leader" || !until.After(tl.Now()) {
							t.Fatalf("token %d: lock hint %q until %v, want the leader's lease beyond now", i, holder, until)
						}
					}
				}
				if got := f.link.Writes() - sent; got != 0 {
					t.Fatalf("the follower sent Redis %d writes in 30 minutes at rest with %d tokens, want none", got, n)
				}
			})
		})
	}
}

func TestBeatsStopWithLeadership(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		f := newBeatFleet(t, tl, srv, 2, time.Hour)
		f.lead(tl.Now().Add(time.Hour))
		tl.Advance(2 * testPoll)
		f.leader[0].Lead(time.Time{}) // the first token's lock lost
		synctest.Wait()               // a beat published before is delivered
		_, stopped := f.follower[0].LockHint()
		sent := f.link.Writes()
		tl.Advance(time.Minute)
		if _, until := f.follower[0].LockHint(); !until.Equal(stopped) {
			t.Fatalf("a beat named a token after its leader stopped leading it: hint until %v, was %v", until, stopped)
		}
		if _, until := f.follower[1].LockHint(); !until.After(tl.Now()) {
			t.Fatal("the token still led is no longer announced")
		}
		if got := f.link.Writes() - sent; got != 0 {
			t.Fatalf("the follower sent Redis %d writes while a leader beats, want none", got)
		}

		// No leader at all: the follower proves its events by PINGs, as
		// before beats.
		f.leader[1].Lead(time.Time{})
		sent = f.link.Writes()
		tl.Advance(time.Minute)
		if !f.follower[0].EventsProven() {
			t.Fatal("with no leader beating, the follower's events are not proven alive by its PINGs")
		}
		if got := f.link.Writes() - sent; got == 0 {
			t.Fatal("with no leader beating, the follower sent no PING in a minute")
		}
	})
}

// A lost event is served within the documented bound when the follower's
// subscription goes silent: beats prove nothing they did not carry.
func TestBeatsLapseWithTheSubscription(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		keys := cache.KeysFor("liveness")
		writer := silentWriter(t, tl, srv, keys)
		leader := followingStore(t, tl, srv.Client(t), srv.Client(t), keys, "leader")
		link := srv.NewLink(t)
		reader := followingStore(t, tl, srv.Client(t), link.Client(t), keys, "")
		leader.Lead(tl.Now().Add(time.Hour))
		tl.Advance(2 * testPoll)
		if !reader.EventsProven() {
			t.Fatal("the events are not proven alive with a leader beating")
		}
		srv.Mini.Set(keys.Lock, "holder")

		link.Cut() // neither beats nor PONGs come through from now on
		for i, value := range []string{"first", "second", "third"} {
			missedWrite(t, writer, value, tl.Now().Add(time.Duration(i+1)*time.Hour))
			written := tl.Now()
			tl.Advance(testPoll)
			if got, ok := reader.Current(); !ok || got.Value != value {
				t.Fatalf("a poll interval after a write missed with the events in doubt, the reader holds %q (%v), want %q", got.Value, ok, value)
			}
			tl.Advance(written.Add(testPoll + time.Duration(i+1)*testPoll/3).Sub(tl.Now()))
		}
	})
}

// TestStaleRoundTripStopsCostingPings gives the follower a round trip of
// 1.5 s, as in a busy moment, longer than the gap a beat's proof may be
// dated back and still hold off a PING (5/8 of the poll interval, the
// PING's period, less half of it, the beats'): its PINGs' PONGs, round
// trips of their own, bring the cut down, and within a minute the leader's
// beats alone prove its events again: it sends nothing more.
func TestStaleRoundTripStopsCostingPings(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		f := newBeatFleet(t, tl, srv, 3, time.Hour)
		f.lead(tl.Now().Add(2 * time.Hour))
		tl.Advance(2 * testPoll)
		for _, s := range f.follower {
			cache.SetRTT(s, 1500*time.Millisecond)
		}
		tl.Advance(time.Minute)
		sent := f.link.Writes()
		tl.Advance(10 * time.Minute)
		if got := f.link.Writes() - sent; got != 0 {
			t.Fatalf("the follower sent Redis %d writes in 10 minutes with a leader beating, a minute after a round trip of 1.5 s, want none", got)
		}
	})
}

// Over plain pub/sub every leader's beat reaches the whole fleet: two
// leaders beat about as often as one, the quiet one only to keep its
// lease announced, and the followers stay proven and hinted.
func TestLeadersShareTheProof(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		const tokens = 2
		replica := func(name string) ([]*cache.Store, *redistest.Link) {
			link := srv.NewLink(t)
			rdb := link.Client(t)
			e := cache.NewEvents(rdb, cache.EventsConfig{Clock: tl.Clock, Logger: quiet})
			var stores []*cache.Store
			for i := range tokens {
				s, err := cache.New(rdb, cache.Config{Keys: cache.KeysFor(fmt.Sprintf("shared-%d", i)), ServeMargin: time.Second,
					PollInterval: testPoll, RestPollInterval: time.Hour, Instance: name, Clock: tl.Clock, Logger: quiet, Events: e})
				if err != nil {
					t.Fatal(err)
				}
				stores = append(stores, s)
			}
			runEvents(t, e)
			for _, s := range stores {
				run(t, s)
			}
			return stores, link
		}
		a, alink := replica("a")
		b, blink := replica("b")
		follower, flink := replica("follower")
		lease := time.Hour
		a[0].Lead(tl.Now().Add(lease))
		b[1].Lead(tl.Now().Add(lease))
		tl.Advance(2 * testPoll)

		beats := func() int64 { return alink.Writes() + blink.Writes() }
		sentBeats, sentFollower := beats(), flink.Writes()
		const periods = 600 // of testPoll/2, the beat's period
		for range periods / 60 {
			tl.Advance(30 * testPoll)
			for i, s := range follower {
				if !s.EventsProven() {
					t.Fatalf("token %d: the follower's events are not proven alive with two leaders", i)
				}
				if _, until := s.LockHint(); !until.After(tl.Now()) {
					t.Fatalf("token %d: the lease is no longer announced (hint until %v)", i, until)
				}
			}
		}
		if got := flink.Writes() - sentFollower; got != 0 {
			t.Fatalf("the follower sent Redis %d writes at rest with two leaders, want none", got)
		}
		// One beat a period proves the fleet; each lease is announced again
		// when half spent (twice here at most).
		if got := beats() - sentBeats; got > periods+periods/10 {
			t.Fatalf("two leaders sent %d writes in %d beat periods, want one beat a period (each leader beating: %d)", got, periods, 2*periods)
		}

		// The leader that proved the fleet stops leading: the other takes
		// over within a PING or two of each subscription.
		a[0].Lead(time.Time{})
		sentFollower = flink.Writes()
		tl.Advance(time.Minute)
		if !follower[1].EventsProven() {
			t.Fatal("the remaining leader's beats do not prove the follower's events")
		}
		if _, until := follower[1].LockHint(); !until.After(tl.Now()) {
			t.Fatalf("the remaining leader's lease is not announced (hint until %v)", until)
		}
		if got := flink.Writes() - sentFollower; got > 2 {
			t.Fatalf("the follower sent Redis %d writes in the minute after a leader stopped, want a PING at most", got)
		}
	})
}
