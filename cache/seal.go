package cache

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// errNoKey means the token in Redis is encrypted with a key this replica
// does not have; it does not serve it.
var errNoKey = errors.New("cache: token encrypted with an unknown key")

// errDecrypt means the token in Redis could not be decrypted with the key
// it names: the key is wrong or the data was altered.
var errDecrypt = errors.New("cache: token does not decrypt")

// sealKey is one AES-256 key of a Keyring.
type sealKey struct {
	// ID names the key in what it encrypts, so that keys can rotate. It
	// must be non-empty and hold no ',' or ':'.
	ID string
	// Secret is the 32-byte AES-256 key.
	Secret []byte
}

// Keyring encrypts tokens at rest in Redis with AES-256-GCM. The first key
// encrypts; every key decrypts what was written with it, so a key can be
// rotated by adding the new key first on every replica, then dropping the
// old one once the token has been refreshed. A Keyring is safe for
// concurrent use.
type Keyring struct {
	current string
	aeads   map[string]cipher.AEAD
}

// newKeyring returns a keyring whose first key encrypts.
func newKeyring(keys ...sealKey) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("cache: a keyring needs at least one key")
	}
	kr := &Keyring{current: keys[0].ID, aeads: make(map[string]cipher.AEAD, len(keys))}
	for i, k := range keys {
		switch {
		case k.ID == "" || strings.ContainsAny(k.ID, ",: \t"):
			return nil, fmt.Errorf("cache: encryption key %d: the id must be non-empty, without ',', ':' or spaces", i+1)
		case len(k.Secret) != 32:
			return nil, fmt.Errorf("cache: encryption key %q: %d bytes, want 32 (AES-256)", k.ID, len(k.Secret))
		case kr.aeads[k.ID] != nil:
			return nil, fmt.Errorf("cache: encryption key %q is given twice", k.ID)
		}
		block, err := aes.NewCipher(k.Secret)
		if err != nil {
			return nil, fmt.Errorf("cache: encryption key %q: %w", k.ID, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("cache: encryption key %q: %w", k.ID, err)
		}
		kr.aeads[k.ID] = aead
	}
	return kr, nil
}

// ParseKeyring reads "id:base64,id:base64,..." (standard or URL base64 of
// 32 bytes); the first key encrypts. Error messages never quote a secret.
func ParseKeyring(spec string) (*Keyring, error) {
	var keys []sealKey
	for i, item := range strings.Split(spec, ",") {
		id, secret, ok := strings.Cut(strings.TrimSpace(item), ":")
		if !ok {
			return nil, fmt.Errorf("cache: encryption key %d: want id:base64-secret", i+1)
		}
		raw, err := decodeBase64(secret)
		if err != nil {
			return nil, fmt.Errorf("cache: encryption key %q: the secret is not base64", id)
		}
		keys = append(keys, sealKey{ID: id, Secret: raw})
	}
	return newKeyring(keys...)
}

func decodeBase64(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// seal encrypts value with the current key, bound to aad (the Redis key it
// is stored under), and returns the key id and the sealed text.
func (kr *Keyring) seal(value, aad string) (string, string, error) {
	aead := kr.aeads[kr.current]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(value)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", "", err
	}
	sealed := aead.Seal(nonce, nonce, []byte(value), []byte(aad))
	return kr.current, base64.RawStdEncoding.EncodeToString(sealed), nil
}

// open decrypts text sealed with the key id.
func (kr *Keyring) open(id, text, aad string) (string, error) {
	aead := kr.aeads[id]
	if aead == nil {
		return "", fmt.Errorf("%w %q", errNoKey, id)
	}
	raw, err := base64.RawStdEncoding.DecodeString(text)
	if err != nil || len(raw) < aead.NonceSize()+aead.Overhead() {
		return "", fmt.Errorf("%w with key %q: malformed", errDecrypt, id)
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], []byte(aad))
	if err != nil {
		return "", fmt.Errorf("%w with key %q", errDecrypt, id)
	}
	return string(plain), nil
}
