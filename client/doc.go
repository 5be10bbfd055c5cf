// Package client is the Go client of the tokenkeeper HTTP service: it asks
// a fleet of replicas for a token (GET /v1/tokens/{name}) and keeps the
// answer until shortly before it expires.
//
// # What it promises
//
//   - Token never returns an expired token. A token's expiry is counted on
//     the client's own clock from when the request that got it
//     was sent, plus the answer's expires_in: the time the answer spent on
//     the wire only shortens the token's life here, never stretches it. The
//     service's expires_at is not used, so the service's wall clock and the
//     client's never meet.
//   - A token is reused until Config.Margin before that expiry; after that,
//     the next call to Token asks the service again.
//   - One request per token name is in flight at a time: callers that
//     arrive while it runs wait for its answer. A caller whose context ends
//     stops waiting (and gets its context's error); the others keep
//     waiting. When every caller has gone, the request is cancelled.
//   - Endpoints are tried in turn, starting from the one that last answered
//     well. A network error, a 5xx answer, a 429 or a malformed answer
//     moves on to the next endpoint. 401, 404 and other 4xx answers end the
//     call at once: they are the same at every replica.
//   - When every endpoint has failed and at least one answered 503 or 429
//     with Retry-After, Token waits the shortest Retry-After and tries the
//     round again, as long as the time spent waiting stays within
//     Config.MaxWait and the context lasts. It never retries sooner than a
//     replica asked. Otherwise it returns an error wrapping ErrUnavailable.
//
// # Serving a token past the margin while the service is down
//
// When a token has passed its margin but not its expiry, and the service
// cannot give a new one (the error wraps ErrUnavailable), Token returns the
// token it has, with a nil error: it is still valid, and a caller is better
// served by it than by an error. In that case it does not wait for
// Retry-After (it has something to give), and until the Retry-After a
// replica asked for has passed, later calls return the same token without
// asking. Once the token has expired, the error is returned instead. A
// 401 or 404 is never papered over this way: a revoked key or a removed
// token is returned as the error at once, though the token is kept for
// its (unchanged) expiry. Callers that must not use a token within the
// margin can check Token.ExpiresIn themselves.
//
// # Errors
//
// Check errors with errors.Is: ErrUnauthorized (401), ErrUnknownToken
// (404), ErrUnavailable (no endpoint could give a token), ErrMalformed (an
// answer that is not a valid token). errors.As with *Error gives the
// service's answer: endpoint, HTTP status, the error code and message from
// its JSON body, and Retry-After. Neither the key nor a token ever appears
// in an error; Token's String method prints a fingerprint, not the value.
//
// A Client is safe for concurrent use. It starts no goroutine that
// outlives the request it serves.
package client
