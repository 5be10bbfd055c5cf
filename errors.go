package tokenkeeper

import (
	"errors"

	"github.com/tokenkeeper/tokenkeeper/internal/fault"
)

// Errors of the Keeper's methods, the one set an embedder checks (with
// errors.Is). The building blocks return these very values, wrapped in
// errors whose text says more: none has a sentinel of its own.
var (
	// ErrUnknownToken means the name is not one the Keeper keeps (or, for
	// DeviceToken, not a per-device one).
	ErrUnknownToken = errors.New("tokenkeeper: unknown token")
	// ErrNoLeader means no replica leads at the moment (Refresh).
	ErrNoLeader = fault.ErrNoLeader
	// ErrRefreshFailed means the leader tried and failed (Refresh).
	ErrRefreshFailed = fault.ErrRefreshFailed
	// ErrUnavailable means no token can be had now: Redis could not be
	// reached (Refresh), or no device token can be minted (DeviceToken).
	ErrUnavailable = fault.ErrUnavailable
	// ErrBadDevice means a device id is refused (DeviceToken): empty,
	// longer than 128 bytes, or holding other than printable ASCII.
	ErrBadDevice = fault.ErrBadDevice
	// ErrMintBudget means the fleet's mint rate or the device's hourly
	// cap is spent (DeviceToken); the message says when to try again.
	ErrMintBudget = fault.ErrMintBudget
	// ErrRedisCommand is returned by Run when Redis lacks a command the
	// Keeper needs: renamed (rename-command), disabled by a managed
	// service, or refused to the ACL user.
	ErrRedisCommand = errors.New("tokenkeeper: Redis lacks a command tokenkeeper needs")
)
