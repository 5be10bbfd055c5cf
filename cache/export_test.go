package cache

import "time"

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

// SetRTT makes d the store's longest recent round trip to Redis, as if a
// command had taken that long.
func SetRTT(s *Store, d time.Duration) { s.rtt.Store(int64(d)) }
