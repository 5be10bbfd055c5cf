package refresher

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokenkeeper/tokenkeeper/internal/plant"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// errAuthBudget means the fleet has used up its upstream logins for the
// current minute.
var errAuthBudget = errors.New("refresher: fleet-wide auth budget exhausted")

// authBudget limits upstream authentication calls across the whole fleet
// with a one-minute sliding window kept in Redis, on Redis's clock.
type authBudget struct {
	rdb    redis.Scripter
	key    string
	limit  int
	window time.Duration
}

// NewAuthBudget returns a budget of perMinute calls shared by every replica
// that uses the same key. The key should carry the token's hash tag, for
// example "tokenkeeper:{liveness}:auth".
func NewAuthBudget(rdb redis.Scripter, key string, perMinute int) (*authBudget, error) {
	if perMinute < 1 {
		return nil, fmt.Errorf("refresher: auth calls per minute must be at least 1, got %d", perMinute)
	}
	if rdb == nil || key == "" {
		return nil, errors.New("refresher: auth budget needs a Redis client and a key")
	}
	return &authBudget{rdb: rdb, key: key, limit: perMinute, window: time.Minute}, nil
}

//go:embed lua/budget.lua
var budgetLua string

// budgetScript (lua/budget.lua) takes one call of a sliding one-minute
// window, on Redis's clock. KEYS: the budget's sorted set. ARGV: limit,
// window ms, call id. Returns 0 when taken, else the ms until one frees up.
var budgetScript = redis.NewScript(budgetLua)

// Take uses one call of the budget. When none is left it returns a
// retryable *upstream.Error wrapping errAuthBudget whose RetryAfter says
// when one frees up. When Redis cannot be reached it fails closed, with a
// retryable error.
func (b *authBudget) Take(ctx context.Context) error {
	if plant.On(plant.BudgetOff) {
		return nil
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return err
	}
	wait, err := budgetScript.Run(ctx, b.rdb, []string{b.key}, b.limit, b.window.Milliseconds(), hex.EncodeToString(id[:])).Int64()
	if err != nil {
		return &upstream.Error{Op: "auth", Retryable: true, Err: fmt.Errorf("auth budget: %w", err)}
	}
	if wait > 0 {
		return &upstream.Error{Op: "auth", Retryable: true, RetryAfter: time.Duration(wait) * time.Millisecond, Err: errAuthBudget}
	}
	return nil
}
