package cache_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
)

func keyring(t *testing.T, ids ...string) *cache.Keyring {
	t.Helper()
	var keys []cache.Key
	for _, id := range ids {
		keys = append(keys, cache.Key{ID: id, Secret: bytes.Repeat([]byte(id[:1]), 32)})
	}
	kr, err := cache.NewKeyring(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func TestEncryptionAtRest(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	f.lock(t, "holder")
	const secret = "liveness-token-in-clear"
	writer := f.store(t, cache.Config{ServeMargin: time.Second, Keyring: keyring(t, "a")})
	if _, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: secret, Deadline: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	stored, err := f.rdb.HGet(ctx, f.keys.Token, "v").Result()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stored, secret) {
		t.Fatal("the token is stored in clear")
	}

	tests := []struct {
		name    string
		keyring *cache.Keyring
		wantErr error
	}{
		{"same key", keyring(t, "a"), nil},
		{"rotated, old key kept", keyring(t, "b", "a"), nil},
		{"wrong key", keyring(t, "b"), cache.ErrNoKey},
		{"no keys", nil, cache.ErrNoKey},
		{"same id, other secret", func() *cache.Keyring {
			kr, _ := cache.NewKeyring(cache.Key{ID: "a", Secret: bytes.Repeat([]byte("x"), 32)})
			return kr
		}(), cache.ErrDecrypt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.store(t, cache.Config{ServeMargin: time.Second, Keyring: tt.keyring})
			_, err := r.Load(ctx)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Load: got %v, want %v", err, tt.wantErr)
			}
			got, ok := r.Current()
			if tt.wantErr != nil {
				if ok {
					t.Fatalf("serves %q from a token it cannot decrypt", got.Value)
				}
				if !errors.Is(r.Unreadable(), tt.wantErr) {
					t.Fatalf("Unreadable: got %v, want %v", r.Unreadable(), tt.wantErr)
				}
				return
			}
			if !ok || got.Value != secret {
				t.Fatalf("got %q, %v; want the token", got.Value, ok)
			}
		})
	}

	// Sealed text moved under another key does not open.
	other := f.keys
	other.Token += ":copy"
	if err := f.rdb.HSet(ctx, other.Token, "v", stored, "k", "a", "at", 0, "w", "x").Err(); err != nil {
		t.Fatal(err)
	}
	f.rdb.Expire(ctx, other.Token, time.Minute)
	r := f.store(t, cache.Config{Keys: other, Keyring: keyring(t, "a")})
	if _, err := r.Load(ctx); !errors.Is(err, cache.ErrDecrypt) {
		t.Fatalf("moved ciphertext: got %v, want ErrDecrypt", err)
	}
}

func TestParseKeyring(t *testing.T) {
	k32 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	k16 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 16))
	tests := []struct {
		spec    string
		wantErr string
	}{
		{"k1:" + k32, ""},
		{"k2:" + k32 + ", k1:" + k32, ""},
		{"k1", "want id:base64-secret"},
		{"k1:" + k16, "16 bytes, want 32"},
		{"k1:not*base64", "not base64"},
		{":" + k32, "id must be non-empty"},
		{"k1:" + k32 + ",k1:" + k32, "given twice"},
	}
	for _, tt := range tests {
		_, err := cache.ParseKeyring(tt.spec)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%q: got %v, want no error", tt.spec, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%q: got %v, want %q", tt.spec, err, tt.wantErr)
		case err != nil && strings.Contains(err.Error(), k32):
			t.Errorf("%q: the error quotes the secret", tt.spec)
		}
	}
}
