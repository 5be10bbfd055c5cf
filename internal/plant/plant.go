// Package plant holds switches that plant known bugs in the fleet's
// building blocks, for the simulator (internal/sim) alone: it proves that
// its invariants have teeth by finding each planted bug. Nothing else
// turns a switch on; with every switch off (always, outside the
// simulator's tests) the code behaves as written, and each switch costs
// the code that consults it one atomic load.
package plant

import (
	"fmt"
	"sort"
	"sync/atomic"
)

// Bug names a plantable bug.
type Bug string

// The plantable bugs: what each breaks, and which invariant of the
// simulator is meant to catch it.
const (
	// ServeExpired: the store serves the token it holds whatever its
	// expiry (invariant 1).
	ServeExpired Bug = "serve-expired"
	// DatedFromArrival: a fetched token's life counts from when the
	// answer arrived, not from when the request was sent, so a slow
	// answer overstates it (invariant 1).
	DatedFromArrival Bug = "dated-from-arrival"
	// AdoptOlder: a replica adopts whatever token Redis holds, even an
	// older one than it serves (a restore from an older snapshot), so it
	// goes backwards (invariant 2).
	AdoptOlder Bug = "adopt-older"
	// NoReleaseOnStop: a leader stopped gracefully leaves its lock to
	// expire instead of releasing it (invariant 8, the handover bound).
	NoReleaseOnStop Bug = "no-release-on-stop"
	// BudgetOff: the fleet-wide sign-on budget lets every sign-on through
	// (invariant 4).
	BudgetOff Bug = "budget-off"
	// UnsavedForgotten: a token fetched but not stored (Redis failing at
	// that moment) is forgotten, so another is fetched (invariant 3).
	UnsavedForgotten Bug = "unsaved-forgotten"
	// FenceOff: the token write does not check that the writer still
	// holds the lock, so a deposed leader's late write is stored
	// (invariant 9, the fence: found once a frozen leader resumes).
	FenceOff Bug = "fence-off"
	// WriteBudgetOff: the token write is cut by the longest recent round
	// trip only, as before the simulator found that go-redis may send it
	// again later with the same time to live, so Redis's expiry may pass
	// the token's (invariant 1; the regression test of that defect).
	WriteBudgetOff Bug = "write-budget-off"
	// DeviceStoreUncut: a device's minted token is stored with the life it
	// had before the store was sent, as before the simulator found that a
	// slow store makes Redis's expiry pass the token's (invariant 1).
	DeviceStoreUncut Bug = "device-store-uncut"
	// DeviceClaimOff: a replica minting for a device does not wait for
	// another's claim, and hands out its own token even when the device
	// holds another, so two replicas asked at once both mint (invariant
	// 6).
	DeviceClaimOff Bug = "device-claim-off"
	// DeviceSecretKept: a replica keeps the device digest secret it read
	// once, as before the simulator found that a replica started after
	// Redis lost the secret makes another, so two replicas mint a device
	// two tokens (invariant 6; the regression test of that defect).
	DeviceSecretKept Bug = "device-secret-kept"
	// DeviceStoreOnce: a device's new token is stored as before the
	// simulator found that after SCRIPT FLUSH a Redis slower than half the
	// store's budget fails every store (EVALSHA, NOSCRIPT, then EVAL): one
	// EVALSHA, and the token forgotten if it fails, so the device's next
	// ask mints again (invariant 6; the regression test of that defect).
	DeviceStoreOnce Bug = "device-store-once"
	// DeviceStoreUnbounded: a device's new token is stored with its life
	// cut by the store's budget only, as before the simulator found that
	// a link slower than the budget delivers a store its sender gave up
	// on, and Redis starts the token's life that late (invariant 1; the
	// regression test of that defect).
	DeviceStoreUnbounded Bug = "device-store-unbounded"
)

// All lists every plantable bug.
func All() []Bug {
	b := append([]Bug(nil), bugs...)
	sort.Slice(b, func(i, j int) bool { return b[i] < b[j] })
	return b
}

var bugs = []Bug{ServeExpired, DatedFromArrival, AdoptOlder, NoReleaseOnStop, BudgetOff, UnsavedForgotten, FenceOff, WriteBudgetOff,
	DeviceStoreUncut, DeviceClaimOff, DeviceSecretKept, DeviceStoreOnce, DeviceStoreUnbounded}

var on [16]atomic.Bool

func index(b Bug) int {
	for i, x := range bugs {
		if x == b {
			return i
		}
	}
	return -1
}

// Set plants b (on) or removes it; it fails for an unknown name.
func Set(b Bug, planted bool) error {
	i := index(b)
	if i < 0 {
		return fmt.Errorf("plant: no bug named %q (plantable: %v)", b, All())
	}
	on[i].Store(planted)
	return nil
}

// On reports whether b is planted.
func On(b Bug) bool {
	i := index(b)
	return i >= 0 && on[i].Load()
}
