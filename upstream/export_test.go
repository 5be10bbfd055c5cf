package upstream

// Exported for the tests of package upstream_test.
var (
	ErrMalformed     = errMalformed
	ErrInvalidExpiry = errInvalidExpiry
	ErrInvalidToken  = errInvalidToken
)

const (
	MaxTokenBytes = maxTokenBytes
	MaxLifetime   = maxLifetime
)
