package httpapi_test

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
)

// fakeTokens is a Tokens whose token the test sets.
type fakeTokens struct {
	mu    sync.Mutex
	tok   cache.Token
	ok    bool
	panic bool
}

func (f *fakeTokens) Current() (cache.Token, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.panic {
		panic("fakeTokens: told to panic")
	}
	return f.tok, f.ok
}

func (f *fakeTokens) set(tok cache.Token, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tok, f.ok = tok, ok
}

// fakeController is a Controller answering what the test sets. With
// refresh nil, Refresh blocks until ctx ends.
type fakeController struct {
	status    httpapi.Status
	statusErr error
	refresh   func(ctx context.Context) (cache.Token, error)
	refreshes atomic.Int32
	started   chan struct{} // if set, closed when Refresh is first called
	once      sync.Once
}

func (f *fakeController) Status(ctx context.Context) (httpapi.Status, error) {
	return f.status, f.statusErr
}

func (f *fakeController) Refresh(ctx context.Context, _ string) (cache.Token, error) {
	f.refreshes.Add(1)
	if f.started != nil {
		f.once.Do(func() { close(f.started) })
	}
	if f.refresh == nil {
		<-ctx.Done()
		return cache.Token{}, ctx.Err()
	}
	return f.refresh(ctx)
}
