// Package upstream obtains liveness tokens from the LSEG/Refinitiv Data
// Platform (RDP), and access tokens from any OAuth2 token endpoint. Its
// fake, for tests, the demo and the compose stack, is package fakerdp,
// which serves both.
//
// An [OAuth2] is the other token source: a client-credentials grant
// against any OAuth2 token endpoint, whose access token is the token kept.
// The promises below hold for it too (its failures have Op "token"), but
// for the absolute expiry, which OAuth2 answers do not have; its only
// second request is the "auto" client-authentication probe's (see
// [OAuth2.Token]).
//
// A [Client] performs one OAuth2 sign-on (auth v2 client credentials, or
// auth v1 password grant with a refresh token), keeps the access token while
// it is valid, and calls the liveness endpoint with it. It promises:
//
//   - A [Token] is returned only when the answer was well formed: a non-empty
//     token of printable ASCII no longer than 8 KiB, and a lifetime in
//     (0, 24h]. Anything else is an error and no token.
//   - A token's life is counted from when the request that obtained it was
//     sent ([Token].Sent, read from Config.Clock just before the HTTP call,
//     on the monotonic clock with clock.Real), never from when the
//     answer arrived: Sent+Lifetime is not later than the true expiry however
//     slow the answer. The same holds for the access token kept for reuse.
//   - An absolute expiry (expiresAt) is measured against the answer's own
//     Date header, less one second for Date's whole-second resolution, so a
//     skew between the upstream's wall clock and ours neither stretches nor
//     refuses a token. Only an answer without a usable Date header is
//     compared with the local wall clock at send time; that assumes the two
//     clocks agree (keep the host on NTP), and a local clock running behind
//     the upstream's then overstates the lifetime by the difference.
//   - Every failure is an [*Error], classified for the caller's retry policy
//     ([IsRetryable], [RetryAfter]).
//   - No error message and no log line carries a secret, a password, an
//     access or refresh token, or a liveness token. Upstream error bodies are
//     never copied into errors; at most the OAuth2 error code is kept.
//
// It does not retry on its own beyond one re-authentication after a 401 from
// the liveness endpoint, and it does not limit how often it signs on: the
// caller (the refresher) owns backoff and the auth rate budget.
package upstream
