// Package tokenkeeper keeps short-lived tokens for a whole fleet of
// stateless replicas that share a Redis: the RDP liveness token by
// default, or a catalog of named tokens (Config.Tokens) from RDP or any
// OAuth2 token endpoint, each kept as described below; an RDP token may
// also be minted per device over one access token the fleet shares
// (TokenConfig.PerDevice, Keeper.DeviceToken).
//
// Every replica serves the token from memory; one replica at a time,
// elected through a Redis lock, fetches the next token before the current
// one expires and writes it to Redis with a fenced write; every other
// replica picks it up within milliseconds through pub/sub. The fleet
// survives a killed or frozen leader, Redis restarting empty or turning
// slow, a failing upstream or one replica that cannot reach it, and clock
// skew, and never hands out an expired token.
//
// A Keeper is one replica. An API's own replicas can be the fleet: build a
// Keeper with New, run it with Run beside the API's server, and either
// read the token in process (Current, Token) or mount Handler, the same
// HTTP face `tokenkeeper serve` offers, in the API's router. Replicas
// embedded this way and `tokenkeeper serve` processes sharing one Redis are
// one fleet.
//
// # Guarantees
//
//   - One token: after a refresh, every replica serves the new token within
//     milliseconds; one that missed the message catches up by polling.
//   - Never expired: no replica serves a token within Config.ServeMargin of
//     its expiry. Expiries are kept by Redis and read as remaining time,
//     added to the local monotonic clock: wall clocks are never compared.
//   - One fetch: the upstream sees one request per token lifetime, however
//     many replicas run.
//   - No stale writer: a leader that lost its lock cannot overwrite a newer
//     token (the write checks the lock and the expiry in one Lua script).
//   - Keeps serving: with Redis down or the upstream failing, replicas serve
//     the token they hold until it expires.
//   - Never backwards: a replica never goes back to an older token than
//     one it served; the newer one is written back instead.
//
// The repository's docs/architecture.md describes the packages beneath
// (cache, refresher, upstream, httpapi), what each owns, and the timings.
package tokenkeeper
