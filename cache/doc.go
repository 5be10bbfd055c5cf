// Package cache keeps one token of the catalog (a Store per token, on its
// own keys, KeysFor): Redis holds the shared truth, and every replica
// holds an in-memory copy that it serves from. Events carries every
// store's change messages over as few subscriptions as the topology
// allows.
//
// # Guarantees
//
//   - Reads never touch Redis: Store.Current answers from memory and is safe
//     for concurrent use by any number of goroutines.
//   - Writes are fenced. Store.Write runs one Lua script that stores the token
//     only if the writer's lock value is still the one in Redis and the new
//     token expires later than the stored one. The expiry is computed and
//     kept inside Redis (PEXPIREAT on Redis's own clock), and the script
//     publishes a change event in the same step.
//   - Every replica's copy follows a change within milliseconds through
//     pub/sub, and within the poll interval of the write if the event is
//     lost: Events PINGs each subscription, and polls every store at once,
//     rarely while the PINGs are answered (no event can have been lost),
//     every poll interval while they are not (poll.go).
//   - A replica's deadline for a token is the remaining lifetime Redis
//     reported plus the local monotonic clock at the moment the request was
//     sent; wall clocks are never compared, so clock skew between replicas,
//     or between a replica and Redis, cannot make a replica serve an expired
//     token.
//   - When Redis is unreachable or loses its data, the copy in memory is
//     kept and served until its deadline minus the serve margin.
//
// # What it does not promise
//
// The store does not elect anyone or fetch tokens: the refresher package
// does. Fencing relies on the lock key being the one the refresher holds;
// it protects against a paused or partitioned writer, not against a writer
// that holds the lock and writes garbage.
package cache
