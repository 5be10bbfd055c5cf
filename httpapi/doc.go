// Package httpapi is the HTTP face of a tokenkeeper replica: it hands out
// the liveness token this replica holds in memory and exposes health,
// readiness, metrics and a small admin API.
//
// # Routes
//
//	GET  /v1/tokens/liveness          reader or admin key; the token
//	GET  /healthz                     anyone; 200 while the process runs
//	GET  /readyz                      anyone; 200 only while a servable token is held
//	GET  /metrics                     anyone, or a metrics or admin key when MetricsKeys are set
//	GET  /v1/status                   admin key; Status, never the token
//	POST /v1/tokens/liveness/refresh  admin key; the leader fetches a new token now
//	GET  /status                      the status page (HTML, no data: it asks for an admin key and reads /v1/status)
//	GET  /openapi.json                anyone; the OpenAPI 3 description of these routes
//
// The admin routes (and the status page) exist only when admin keys are
// configured; without them they answer 404 like any unknown route.
//
// # Guarantees
//
//   - The token route never serves a token that tokenSource.Current does not
//     offer, nor one whose deadline has passed; with none it answers 503 with
//     Retry-After. It never touches Redis or the upstream.
//   - The key is checked before the token name, so without a valid key every
//     name answers 401 and names do not leak.
//   - Keys are compared as SHA-256 digests in constant time, against every
//     configured key, so neither a key's content nor its length leaks
//     through timing.
//   - Every answer carries X-Tokenkeeper-Instance, X-Content-Type-Options:
//     nosniff and Cache-Control: no-store. Every error, including echo's
//     own 404 and 405, is JSON: {"error":{"code":"...","message":"..."}}.
//     Under Serve this holds too for the requests net/http refuses before
//     any handler runs: 431 header_too_large, 400 bad_request, 501
//     not_implemented, 505 http_version_not_supported, each with
//     Connection: close. Messages never repeat request input.
//   - Keys and tokens are never logged, and no answer but the token route's
//     200 contains the token; the admin routes show its fingerprint.
//   - Requests are not logged at Info; handler failures are logged at Debug,
//     Warn or Error.
//
// # Performance
//
// A plain token read (GET /v1/tokens/{name}, no escaped path, no body)
// is answered without echo's router and context, by the same handler code
// and with the same checks, metrics and answers as echo's route, which
// serves every other token read. Each token's answer is rendered once,
// by the first read that serves it, and written as it is by the reads
// that follow, with expires_in counted down per read (never more than the
// whole seconds left). Headers are set from shared, preallocated values
// under their canonical keys, so a read costs no heap allocation of its
// own; what net/http does per answer (copying the header map, writing each
// header) is the rest of the cost. On a Serve connection, the write
// deadline net/http moves on every request is kept coarse (earlyConn).
package httpapi
