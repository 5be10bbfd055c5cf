package upstream

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// Token is a liveness token as the upstream answered it.
type Token struct {
	// Value is the credential. Never log it.
	Value string
	// Lifetime is how long the token is valid, counted from Sent. It is
	// taken from the answer: expiresIn/expires_in as is; for
	// expiresAt/expires_at, the expiry minus the answer's Date header minus
	// one second (Date has whole-second resolution), or, when the answer has
	// no usable Date header, the expiry minus Sent on the local wall clock,
	// which assumes the local and upstream clocks agree. When the answer
	// names no expiry, it is the configured default. Since the upstream
	// answered after Sent, Sent+Lifetime does not outlast the token, unless
	// the fallback's clocks disagree.
	Lifetime time.Duration
	// Sent is when the request that obtained it was sent, on the local clock
	// (monotonic reading kept); the token's life is counted from it.
	Sent time.Time
}

// Op names an upstream call.
type Op string

// The upstream calls.
const (
	OpAuth     Op = "auth"     // a sign-on: password, refresh or client-credentials grant
	OpLiveness Op = "liveness" // the liveness token call
	OpToken    Op = "token"    // an OAuth2 source's client-credentials token call (see OAuth2)
)

// AuthVersion selects RDP's sign-on.
type AuthVersion string

// The sign-ons RDP offers.
const (
	AuthV1 AuthVersion = "v1" // password grant with refresh token, one session per machine account
	AuthV2 AuthVersion = "v2" // client credentials (service account)
)

// Error is an upstream failure, classified for the caller's retry policy.
type Error struct {
	// Op names the call that failed.
	Op Op
	// Status is the HTTP status, or 0 when no answer came.
	Status int
	// Code is the upstream's error code when it gave one (for example
	// "invalid_grant"); never a credential or token.
	Code string
	// Retryable reports whether the same call may succeed later
	// (network errors, timeouts, 429, 5xx, malformed answers).
	Retryable bool
	// RetryAfter is the delay the upstream asked for (Retry-After), or 0.
	RetryAfter time.Duration
	// Err is the underlying cause.
	Err error
}

func (e *Error) Error() string {
	msg := "upstream: " + string(e.Op)
	if e.Status != 0 {
		msg += ": status " + strconv.Itoa(e.Status)
	}
	if e.Code != "" {
		msg += ": " + e.Code
	}
	if e.Err != nil {
		// The package's sentinels carry the "upstream: " prefix already.
		msg += ": " + strings.TrimPrefix(e.Err.Error(), "upstream: ")
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// IsRetryable reports whether err is worth retrying: an *Error marked
// retryable, or any error that is not an *Error (unknown failures are
// retried with backoff).
func IsRetryable(err error) bool {
	var ue *Error
	if errors.As(err, &ue) {
		return ue.Retryable
	}
	return err != nil
}

// RetryAfter returns the delay the upstream asked for in err, or 0.
func RetryAfter(err error) time.Duration {
	var ue *Error
	if errors.As(err, &ue) {
		return ue.RetryAfter
	}
	return 0
}
