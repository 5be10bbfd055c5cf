package cache

// The write path: the fenced write of a new token.

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenkeeper/tokenkeeper/internal/plant"
	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
)

//go:embed lua/write.lua
var writeLua string

// writeScript (lua/write.lua) stores a token under the fence. KEYS: token, lock.
// ARGV: lock value, token, ttl ms, age ms, writer, channel, event (a
// tokenEvent's JSON without its two closing braces, which the script
// appends after the token's expiry, Redis's clock and the generation), key
// id (empty when the token is stored as it is), the publishing command
// (PUBLISH or SPUBLISH), the highest generation the writer knows, and
// the generation of a token written back from memory (0: a new token).
// Returns {1, expiry ms, generation} when stored, {0} when fenced, {-1}
// when stale (the stored token expires as late or later, and is not older
// by generation than a token written back). The generation stored is one more than the key's or the
// writer's, whichever is higher.
// A token key of another type than a hash is overwritten: only the lock
// holder gets this far.
var writeScript = redis.NewScript(writeLua)

// unfencedScript is writeScript without its fence, for the simulator's
// planted bug plant.FenceOff alone.
var unfencedScript = redis.NewScript(strings.Replace(writeLua, "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0} end", "", 1))

// Write is a token offered for storage.
type Write struct {
	// LockValue is the full value of the writer's lock key (redislock's
	// token followed by its metadata).
	LockValue string
	// Value is the token.
	Value string
	// Deadline is when the token expires on the writer's local clock.
	Deadline time.Time
	// FetchedAt is when the writer received it from the upstream.
	FetchedAt time.Time
	// Generation, when the token is written back from memory (a re-seed),
	// is the generation it was stored with before; 0 for a new token. A
	// token written back whose generation is higher than the stored one's
	// replaces it even when it is dated to expire sooner: it is the newer
	// token, dated earlier by its own round trips.
	Generation uint64
}

// Write stores w in Redis if the writer still holds the lock and w expires
// later than the stored token (or is a token written back with a higher
// generation than the stored one's), then adopts it locally and publishes a
// change event, all in one step. It returns ErrFenced or ErrStale when
// refused, and wraps Redis errors otherwise.
//
// Under a span of the caller's that records, the write gets a span of its
// own (db.operation.name EVALSHA, and a child for WAIT), whose trace the
// change event carries to the replicas that adopt the token.
func (s *Store) Write(ctx context.Context, w Write) (_ Token, err error) {
	defer func() { s.metrics.write(err) }()
	op := "EVALSHA"
	if s.cfg.Replication.Replicas > 0 {
		op = "EVALSHA WAIT"
	}
	ctx, span := tracing.Child(ctx, "tokenkeeper.store.write", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(tracing.DBSystem.String("redis"), tracing.DBOperation.String(op), tracing.Token.String(s.name)))
	var gen uint64
	defer func() {
		if gen > 0 {
			span.SetAttributes(tracing.Generation.Int64(int64(gen)))
		}
		tracing.Fail(span, err)
		span.End()
	}()
	now := s.cfg.Clock.Now()
	ttl := w.Deadline.Sub(now)
	if err := checkValue(w.Value); err != nil {
		return Token{}, err
	}
	if ttl <= s.cfg.ServeMargin {
		return Token{}, fmt.Errorf("%w: %v left, not more than the serve margin %v",
			ErrInvalid, ttl.Round(time.Millisecond), s.cfg.ServeMargin)
	}
	age := now.Sub(w.FetchedAt)
	if w.FetchedAt.IsZero() || age < 0 {
		age = 0
	}
	t := Token{Value: w.Value, Deadline: w.Deadline, FetchedAt: now.Add(-age), Writer: s.cfg.Instance}
	stored, keyID := w.Value, ""
	if s.cfg.Keyring != nil {
		if keyID, stored, err = s.cfg.Keyring.seal(w.Value, s.cfg.Keys.Token); err != nil {
			return Token{}, fmt.Errorf("cache: encrypt token: %w", err)
		}
	}
	event, err := json.Marshal(tokenEvent{
		Message: Message{Type: MsgToken, From: s.cfg.Instance, Fingerprint: t.Fingerprint(), Trace: tracing.Inject(ctx)},
		Tok:     &eventToken{Value: stored, KeyID: keyID, Writer: s.cfg.Instance, AgeMS: age.Milliseconds()},
	})
	if err == nil && !bytes.HasSuffix(event, []byte("}}")) {
		err = errors.New("it does not end with the token's object")
	}
	if err != nil {
		return Token{}, fmt.Errorf("cache: encode event: %w", err)
	}
	event = event[:len(event)-2] // the script closes it
	var known uint64
	if h := s.cur.Load(); h != nil {
		known = h.Generation
	}
	// Redis starts the token's time to live when the script runs, some
	// way into the round trip: the stored life is cut by the longest
	// recent round trip, so that no replica reading it dates it later
	// than it expires. The client may also send the script again after a
	// timeout or a broken connection (go-redis retries), with the same
	// time to live: the write gets no more than the client's read timeout
	// to be sent, and the stored life is cut by that whole budget.
	cut := s.rttCut()
	if s.rttCap > 0 && !plant.On(plant.WriteBudgetOff) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.rttCap)
		defer cancel()
		cut = s.rttCap
	}
	storedTTL := max(ttl-cut, time.Millisecond)
	keys := []string{s.cfg.Keys.Token, s.cfg.Keys.Lock, s.cfg.Keys.Stamp}
	args := []any{w.LockValue, stored, storedTTL.Milliseconds(), age.Milliseconds(), s.cfg.Instance,
		s.cfg.Keys.Events, string(event), keyID, s.events.publishCommand(), known, w.Generation}
	var res []any
	script := writeScript
	if plant.On(plant.FenceOff) {
		script = unfencedScript
	}
	if s.cfg.Replication.Replicas == 0 {
		res, err = script.Run(ctx, s.rdb, keys, args...).Slice()
	} else {
		var cmd *redis.Cmd
		err = s.replicated(ctx, func(p redis.Pipeliner) { cmd = script.Eval(ctx, p, keys, args...) })
		if cmd != nil && cmd.Err() != nil {
			err = cmd.Err()
		}
		if err == nil || errors.Is(err, errReplication) {
			res, _ = cmd.Slice()
		}
	}
	if err != nil && res == nil {
		return Token{}, fmt.Errorf("cache: write token: %w", err)
	}
	s.noteRTT(now)
	code, _ := res[0].(int64)
	switch code {
	case 1:
		if len(res) > 2 {
			g, _ := res[2].(int64)
			t.Generation = uint64(max(g, 0))
		}
		s.inRedis.Store(true)
		s.behind.Store(false)
		// Seen when the answer came: a read sent before then either ran
		// before the write (older news) or shows this token.
		s.adopt(t, s.cfg.Clock.Now())
		gen = t.Generation
		return t, nil
	case 0:
		return Token{}, ErrFenced
	case -1:
		return Token{}, ErrStale
	default:
		return Token{}, fmt.Errorf("cache: write token: unexpected answer %v", res)
	}
}

// maxValueBytes is the longest token the store accepts.
const maxValueBytes = 8 << 10

// checkValue refuses a token that could not be a credential: empty, over
// maxValueBytes, or holding a space or control character.
func checkValue(v string) error {
	switch {
	case v == "":
		return fmt.Errorf("%w: empty", ErrInvalid)
	case len(v) > maxValueBytes:
		return fmt.Errorf("%w: %d bytes, more than %d", ErrInvalid, len(v), maxValueBytes)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c == 0x7f {
			return fmt.Errorf("%w: a control or space character at byte %d", ErrInvalid, i)
		}
	}
	return nil
}
