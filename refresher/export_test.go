package refresher

import (
	mrand "math/rand/v2"
	"time"
)

// Exported for the tests of package refresher_test.
var (
	NextRefresh = nextRefreshAt
	HolderOf    = holderOf
	OnLiveConn  = onLiveConn
	PTTL        = (*LockChecks).pttl
)

var ErrAuthBudget = errAuthBudget

const (
	OutcomeSuccess       = outcomeSuccess
	OutcomeSuperseded    = outcomeSuperseded
	OutcomeUpstreamError = outcomeUpstreamError
	OutcomeRedisError    = outcomeRedisError
	OutcomeFenced        = outcomeFenced
)

type AuthBudget = authBudget

// Backoff is backoff on the process's generator.
func Backoff(n int, minWait, maxWait, retryAfter time.Duration) time.Duration {
	return backoff(mrand.New(processRand{}), n, minWait, maxWait, retryAfter)
}
