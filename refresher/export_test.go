package refresher

// Exported for the tests of package refresher_test.
var (
	NextRefresh = nextRefreshAt
	HolderOf    = holderOf
	Backoff     = backoff
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
