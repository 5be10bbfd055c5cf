package cache

// Exported for the tests of package cache_test.
var (
	ErrNoKey       = errNoKey
	ErrDecrypt     = errDecrypt
	ErrReplication = errReplication
)

const MaxValueBytes = maxValueBytes

// Key and NewKeyring build keyrings in the tests.
type Key = sealKey

var NewKeyring = newKeyring
