// Package certreload serves a TLS certificate from files that may be
// replaced while the process runs (cert-manager, Vault agent, a mounted
// Kubernetes secret): the files are looked at again, at most once per
// Interval, when a handshake asks for the certificate, and a new pair that
// parses and matches replaces the old one for the handshakes that follow.
// Connections already open keep the certificate they were made with; none
// is cut. A pair that does not load at a check is logged and the previous
// certificate goes on being served.
package certreload

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenkeeper/tokenkeeper/clock"
)

// DefaultInterval is how often, at most, the files are looked at again.
const DefaultInterval = time.Second

// Config says where the certificate and its key are.
type Config struct {
	// CertFile holds the PEM certificate chain, leaf first; KeyFile its
	// PEM private key. Both are required.
	CertFile, KeyFile string
	// Interval is the shortest time between two looks at the files.
	// Default: DefaultInterval.
	Interval time.Duration
	// Clock is the time the interval is counted on. Default: clock.Real().
	Clock clock.Clock
	// Logger receives a line for each reload and each failed one. Default:
	// none are written.
	Logger *slog.Logger
	// ReadFile reads a file. Default: os.ReadFile.
	ReadFile func(string) ([]byte, error)
}

// Reloader hands out the current certificate of a Config's files. Its
// methods are safe for concurrent use.
type Reloader struct {
	cfg  Config
	cert atomic.Pointer[tls.Certificate]

	mu      sync.Mutex // guards the fields below; held by one check at a time
	checked time.Time  // when the files were last looked at
	certPEM []byte     // the files' contents as last loaded or refused
	keyPEM  []byte
}

// New loads the pair at once: a file that cannot be read, that holds no
// PEM certificate or key, or a key that does not match the certificate is
// an error naming the file.
func New(cfg Config) (*Reloader, error) {
	switch {
	case cfg.CertFile == "":
		return nil, errors.New("certreload: no certificate file")
	case cfg.KeyFile == "":
		return nil, errors.New("certreload: no key file")
	case cfg.Interval < 0:
		return nil, fmt.Errorf("certreload: Interval %v is negative", cfg.Interval)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ReadFile == nil {
		cfg.ReadFile = os.ReadFile
	}
	r := &Reloader{cfg: cfg}
	certPEM, keyPEM, err := r.read()
	if err != nil {
		return nil, err
	}
	c, err := r.parse(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	r.cert.Store(c)
	r.certPEM, r.keyPEM, r.checked = certPEM, keyPEM, cfg.Clock.Now()
	return r, nil
}

func (r *Reloader) read() (certPEM, keyPEM []byte, err error) {
	if certPEM, err = r.cfg.ReadFile(r.cfg.CertFile); err != nil {
		return nil, nil, fmt.Errorf("certreload: certificate: %w", err)
	}
	if keyPEM, err = r.cfg.ReadFile(r.cfg.KeyFile); err != nil {
		return nil, nil, fmt.Errorf("certreload: key: %w", err)
	}
	return certPEM, keyPEM, nil
}

// parse makes a certificate of the pair, with its parsed leaf.
func (r *Reloader) parse(certPEM, keyPEM []byte) (*tls.Certificate, error) {
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certreload: %s and %s are not a PEM certificate and its key: %w", r.cfg.CertFile, r.cfg.KeyFile, err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certreload: %s: %w", r.cfg.CertFile, err)
		}
	}
	return &c, nil
}

// Current returns the certificate served now.
func (r *Reloader) Current() *tls.Certificate { return r.cert.Load() }

// GetCertificate is tls.Config.GetCertificate: the current certificate,
// after a look at the files if Interval has passed since the last one.
// A handshake that finds another one looking does not wait for it.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.maybeCheck()
	return r.cert.Load(), nil
}

func (r *Reloader) maybeCheck() {
	if !r.mu.TryLock() {
		return
	}
	defer r.mu.Unlock()
	now := r.cfg.Clock.Now()
	if now.Sub(r.checked) < r.cfg.Interval {
		return
	}
	r.checked = now
	r.check()
}

// Check looks at the files now, whatever the interval, and reports
// whether a new certificate is served from now on. A pair that does not
// load is logged, and the error returned; the previous certificate stays.
func (r *Reloader) Check() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checked = r.cfg.Clock.Now()
	return r.check()
}

// check is Check with r.mu held.
func (r *Reloader) check() (bool, error) {
	certPEM, keyPEM, err := r.read()
	if err == nil && bytes.Equal(certPEM, r.certPEM) && bytes.Equal(keyPEM, r.keyPEM) {
		return false, nil
	}
	var c *tls.Certificate
	if err == nil {
		c, err = r.parse(certPEM, keyPEM)
	}
	if err != nil {
		// Remembered, so that the same bad pair is logged once. A
		// rotation that writes the two files one after the other may be
		// seen half done: the next check finds the pair whole.
		r.cfg.Logger.Warn("certreload: new certificate not loaded; still serving the previous one",
			"err", err, "serving", describe(r.cert.Load()))
		r.certPEM, r.keyPEM = certPEM, keyPEM
		return false, err
	}
	r.certPEM, r.keyPEM = certPEM, keyPEM
	old := r.cert.Swap(c)
	r.cfg.Logger.Info("certreload: certificate reloaded", "was", describe(old), "now", describe(c))
	return true, nil
}

// describe names a certificate in logs: its subject, serial and expiry.
func describe(c *tls.Certificate) string {
	if c == nil || c.Leaf == nil {
		return ""
	}
	return fmt.Sprintf("%s serial %s, expires %s", c.Leaf.Subject.String(), c.Leaf.SerialNumber.Text(16), c.Leaf.NotAfter.UTC().Format(time.RFC3339))
}

// ServerConfig is the TLS configuration of a server that serves r's
// certificate: TLS 1.2 at least, Go's default cipher suites and curves.
// With clientCAs, a client may present a certificate, which must then
// chain to one of them and be valid now (tls.VerifyClientCertIfGiven):
// a client without one still connects, and answers for itself with a key.
func ServerConfig(r *Reloader, clientCAs *x509.CertPool) *tls.Config {
	c := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1"},
	}
	if clientCAs != nil {
		c.ClientCAs = clientCAs
		c.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return c
}

// LoadCAs reads a PEM file of CA certificates into a pool of its own (the
// system roots are not in it).
func LoadCAs(file string, readFile func(string) ([]byte, error)) (*x509.CertPool, error) {
	if readFile == nil {
		readFile = os.ReadFile
	}
	b, err := readFile(file)
	if err != nil {
		return nil, fmt.Errorf("certreload: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("certreload: %s holds no PEM certificate", file)
	}
	return pool, nil
}
