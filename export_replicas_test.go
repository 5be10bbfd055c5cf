package tokenkeeper

import "time"

// SetReplicaCountEvery sets how often replicas count the fleet, for the
// test's duration (restore with the returned function).
func SetReplicaCountEvery(d time.Duration) (restore func()) {
	old := replicaCountEvery
	replicaCountEvery = d
	return func() { replicaCountEvery = old }
}
