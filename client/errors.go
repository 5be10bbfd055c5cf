package client

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Errors of Token. Check them with errors.Is.
var (
	// ErrUnauthorized means the service refused the key (401).
	ErrUnauthorized = errors.New("client: unauthorized")
	// ErrUnknownToken means the service keeps no token of that name (404).
	ErrUnknownToken = errors.New("client: unknown token")
	// ErrUnavailable means no endpoint could give a token: each failed
	// (network error, 5xx, 429, malformed answer) and any Retry-After was
	// waited for as long as MaxWait and the context allowed.
	ErrUnavailable = errors.New("client: unavailable")
	// ErrMalformed means an endpoint answered 200 with something that is
	// not a valid token. It comes wrapped in ErrUnavailable when no other
	// endpoint did better.
	ErrMalformed = errors.New("client: malformed answer")
)

// Error is an answer of the service other than 200. errors.Is matches it
// with ErrUnauthorized (401) and ErrUnknownToken (404).
type Error struct {
	// Endpoint is the base URL that answered.
	Endpoint string
	// Status is the HTTP status code.
	Status int
	// Code and Message are from the JSON error body, when it had one.
	Code, Message string
	// RetryAfter is the answer's Retry-After, 0 when absent.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	s := fmt.Sprintf("client: %s: %d %s", e.Endpoint, e.Status, http.StatusText(e.Status))
	if e.Code != "" {
		s += ": " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %v)", e.RetryAfter)
	}
	return s
}

// Is matches ErrUnauthorized and ErrUnknownToken by status.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized
	case ErrUnknownToken:
		return e.Status == http.StatusNotFound
	}
	return false
}
