// Package fault holds the errors the parts of a Keeper share: the
// building blocks return them (wrapped, with %w, in an error that says
// more) and the front door shows the very same values as its own
// (tokenkeeper.ErrUnavailable is ErrUnavailable), so one errors.Is check
// holds from a building block up to an embedder, and the HTTP face maps
// them to status codes without translation.
package fault

import "errors"

var (
	// ErrNoLeader means no replica leads the token at the moment.
	ErrNoLeader = errors.New("tokenkeeper: no leader")
	// ErrRefreshFailed means the leader tried and failed.
	ErrRefreshFailed = errors.New("tokenkeeper: refresh failed")
	// ErrUnavailable means no token can be had now: Redis could not be
	// reached, or no device token can be minted.
	ErrUnavailable = errors.New("tokenkeeper: unavailable")
	// ErrBadDevice means a device id is refused.
	ErrBadDevice = errors.New("tokenkeeper: invalid device id")
	// ErrMintBudget means a mint budget of per-device tokens is spent.
	ErrMintBudget = errors.New("tokenkeeper: mint budget spent")
)
