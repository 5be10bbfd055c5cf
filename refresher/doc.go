// Package refresher elects one leader per fleet and has it keep the shared
// token fresh.
//
// # Election
//
// Every replica runs a Refresher. Each tries to take a Redis lock
// (github.com/bsm/redislock) named by cache.Keys.Lock; the one that holds it
// leads. The leader renews the lock every RenewEvery (LockTTL/4 by
// default), counted from the sending of the last good renewal, which the
// lock outlives by LockTTL. Each renewal may take RedisTimeout
// (LockTTL/2, which TuneRedis makes the client's timeouts), so a leader keeps its lock
// while Redis's round trips stay under about half the lock TTL; one that
// fails or times out is retried at once while the lease lasts, and
// leadership ends a guard (LockTTL/10) before the lease does, never after:
// the context of all leader-only work is cancelled before the lock could
// have expired in Redis. A renewal refused because the lock is no longer
// this replica's ends leadership at once.
//
// A leader whose refreshes keep failing (HandoverAfter in a row, or one
// refusal of its credentials) releases the lock and stays out of
// elections for HandoverCooldown, unless no other replica takes the lock
// within a lock TTL. A new leader goes on from the fleet's failures in a
// row, recorded in Redis, so handovers do not restart the backoff.
//
// A leader stopped gracefully releases the lock and
// announces it, so another replica leads within a moment; a leader that
// vanishes is replaced once its lock expires, within LockTTL plus
// ElectEvery.
//
// The lock alone does not prevent a paused leader from writing after it
// lost the lock: the write itself is fenced (see cache.Store.Write), and a
// fenced write ends leadership.
//
// # Refresh
//
// The leader fetches a new token from its Source when the current one
// enters the advisory window (RefreshBefore before expiry, a random part of
// Jitter earlier still), immediately when no valid token exists, and on
// request from any replica (Refresh). Failures are retried with capped
// exponential backoff and full jitter, never sooner than a Retry-After the
// upstream named. A token fetched but not stored (Redis unreachable, the
// lock lost during the call) is kept by the replica across terms and
// written when it leads again, if still the newest, instead of fetching
// another. Refresh requests that arrive during an upstream call join it;
// none is dropped, and each is answered. When
// Redis has lost the token (restart, FLUSHALL), the leader writes back its
// own still-valid copy instead of asking the upstream for a new one.
//
// The auth budget caps upstream logins fleet-wide with a sliding window kept in
// Redis.
//
// # Fleet view
//
// Beat writes one beat per replica per period (40 s) into the fleet's hash
// of live replicas, whatever the number of tokens; Heartbeat writes this
// replica's state for one token (version, ready, leader, token
// fingerprint and expiry, last event seen) into the token's hash when it
// changes. A state counts while its replica's beat is fresh (three
// periods); a replica that stops removes both. The leader pushes
// every refresh attempt (outcome, upstream latency, fingerprint, error)
// onto a short list beside it, and keeps the same in memory. Status and
// ReadFleet report both; entries are dated on Redis's clock, so readers
// never compare two wall clocks. The view is for people: nothing in the
// election or the refresh depends on it.
//
// # Metrics
//
// With Config.Registerer set, the refresher exports leadership (gauge and
// changes), refresh attempts by outcome, failures in a row, attempt
// duration, upstream fetches and heartbeats (see metrics.go).
package refresher
