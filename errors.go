package tokenkeeper

import (
	"errors"
	"fmt"

	"github.com/tokenkeeper/tokenkeeper/internal/device"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// Errors of the Keeper's methods, the one set an embedder checks (with
// errors.Is): the building blocks' own errors come wrapped in them, and
// their text says more.
var (
	// ErrUnknownToken means the name is not one the Keeper keeps (or, for
	// DeviceToken, not a per-device one).
	ErrUnknownToken = errors.New("tokenkeeper: unknown token")
	// ErrNoLeader means no replica leads at the moment (Refresh).
	ErrNoLeader = errors.New("tokenkeeper: no leader")
	// ErrRefreshFailed means the leader tried and failed (Refresh).
	ErrRefreshFailed = errors.New("tokenkeeper: refresh failed")
	// ErrUnavailable means no token can be had now: Redis could not be
	// reached (Refresh), or no device token can be minted (DeviceToken).
	ErrUnavailable = errors.New("tokenkeeper: unavailable")
	// ErrBadDevice means a device id is refused (DeviceToken): empty,
	// longer than 128 bytes, or holding other than printable ASCII.
	ErrBadDevice = errors.New("tokenkeeper: invalid device id")
	// ErrMintBudget means the fleet's mint rate or the device's hourly
	// cap is spent (DeviceToken); the message says when to try again.
	ErrMintBudget = errors.New("tokenkeeper: mint budget spent")
	// ErrRedisCommand is returned by Run when Redis lacks a command the
	// Keeper needs: renamed (rename-command), disabled by a managed
	// service, or refused to the ACL user.
	ErrRedisCommand = errors.New("tokenkeeper: Redis lacks a command tokenkeeper needs")
)

// refreshError is err, of a refresher, wrapped in the root's error of its
// class.
func refreshError(err error) error {
	for _, c := range []struct{ inner, outer error }{
		{refresher.ErrNoLeader, ErrNoLeader},
		{refresher.ErrRefreshFailed, ErrRefreshFailed},
		{refresher.ErrUnavailable, ErrUnavailable},
	} {
		if errors.Is(err, c.inner) {
			return fmt.Errorf("%w: %w", c.outer, err)
		}
	}
	return err
}

// deviceError is err, of a device minter, wrapped in the root's error of
// its class.
func deviceError(err error) error {
	for _, c := range []struct{ inner, outer error }{
		{device.ErrBadDevice, ErrBadDevice},
		{device.ErrBudget, ErrMintBudget},
		{device.ErrUnavailable, ErrUnavailable},
	} {
		if errors.Is(err, c.inner) {
			return fmt.Errorf("%w: %w", c.outer, err)
		}
	}
	return err
}
