package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bsm/redislock"

	"github.com/tokenkeeper/tokenkeeper/cache"
)

// propagationResult is figure 3 for one fleet size.
type propagationResult struct {
	N, Writes     int
	P50, P99, Max time.Duration
	WriteP50      time.Duration // the fenced write itself, as the leader sees it
	Samples       int
}

// measurePropagation runs figure 3: n replicas in this process, each with
// its own Redis client, store and HTTP server; a leader writes `writes`
// tokens one after the other, and each replica's time from the start of
// the write to serving the new token is recorded.
func measurePropagation(ctx context.Context, work string, n, writes int, gap time.Duration) (*propagationResult, error) {
	rs, err := startRedis(ctx, work, fmt.Sprintf("redis-propagation-%d", n), "--tcp-backlog", "4096")
	if err != nil {
		return nil, err
	}
	defer rs.Stop()

	var fleet []*replica
	defer func() { stopReplicas(fleet) }()
	for i := range n {
		r, err := startReplica(replicaConfig{Redis: rs.Options(), Instance: fmt.Sprintf("follower-%d", i), HTTP: true})
		if err != nil {
			return nil, err
		}
		fleet = append(fleet, r)
	}
	// The leader: its own client, store and the lock, as a refresher would
	// hold it.
	leader, err := startReplica(replicaConfig{Redis: rs.Options(), Instance: "leader"})
	if err != nil {
		return nil, err
	}
	defer leader.Stop()
	lock, err := redislock.New(leader.rdb).Obtain(ctx, cache.KeysFor("liveness").Lock, 10*time.Minute,
		&redislock.Options{Metadata: "leader"})
	if err != nil {
		return nil, fmt.Errorf("taking the lock: %w", err)
	}
	defer lock.Release(context.Background())
	lockValue := lock.Token() + lock.Metadata()

	// Wait for every subscription, so the first write is not lost to a
	// late one.
	if err := waitFor(ctx, 20*time.Second, 20*time.Millisecond, "replicas subscribed", func() bool {
		m, err := rs.Client.PubSubNumSub(ctx, cache.KeysFor("liveness").Events).Result()
		return err == nil && m[cache.KeysFor("liveness").Events] >= int64(n+1)
	}); err != nil {
		return nil, err
	}

	var all, writeTimes []time.Duration
	base := time.Now().Add(time.Hour)
	for w := range writes {
		value := fmt.Sprintf("%s.%04d", benchToken, w)
		subs := make([]*cache.Subscription, n)
		for i, r := range fleet {
			subs[i] = r.store.Subscribe()
		}
		lat := make([]time.Duration, n)
		var wg sync.WaitGroup
		var start time.Time
		startSet := make(chan struct{})
		for i, r := range fleet {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer subs[i].Close()
				<-startSet
				timeout := time.After(5 * time.Second)
				for {
					if t, ok := r.Current(); ok && t.Value == value {
						lat[i] = time.Since(start)
						return
					}
					select {
					case <-subs[i].Ready():
						for _, more := subs[i].Next(); more; _, more = subs[i].Next() {
						}
					case <-time.After(10 * time.Millisecond): // a token adopted by a poll sends no message
					case <-timeout:
						lat[i] = -1
						return
					}
				}
			}()
		}
		start = time.Now()
		close(startSet)
		_, err := leader.store.Write(ctx, cache.Write{
			LockValue: lockValue, Value: value,
			Deadline: base.Add(time.Duration(w) * time.Second), FetchedAt: time.Now(),
		})
		writeTimes = append(writeTimes, time.Since(start))
		wg.Wait()
		if err != nil {
			return nil, fmt.Errorf("write %d: %w", w, err)
		}
		for i, l := range lat {
			if l < 0 {
				return nil, fmt.Errorf("write %d: replica %d did not serve the new token within 5s", w, i)
			}
		}
		all = append(all, lat...)
		time.Sleep(gap)
	}

	// What the replicas hold is what they serve: check it over HTTP once.
	client := &http.Client{Timeout: 2 * time.Second}
	last := fmt.Sprintf("%s.%04d", benchToken, writes-1)
	for i, r := range fleet {
		req, _ := http.NewRequest(http.MethodGet, r.URL(), nil)
		req.Header.Set("Authorization", "Bearer "+benchKey)
		res, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || !strings.Contains(string(b), `"`+last+`"`) {
			return nil, fmt.Errorf("replica %d serves %d %s, want the last token", i, res.StatusCode, b)
		}
	}

	slices.Sort(all)
	slices.Sort(writeTimes)
	return &propagationResult{
		N: n, Writes: writes, Samples: len(all),
		P50: quantile(all, 0.50), P99: quantile(all, 0.99), Max: all[len(all)-1],
		WriteP50: quantile(writeTimes, 0.5),
	}, nil
}
