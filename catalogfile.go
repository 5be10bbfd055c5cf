package tokenkeeper

import (
	"crypto/x509"
	"io"
	"net/url"
	"os"

	"github.com/tokenkeeper/tokenkeeper/internal/catalog"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// CatalogOptions are what LoadCatalog needs besides the file's path.
type CatalogOptions struct {
	// LookupEnv resolves the file's ${NAME} references. Default:
	// os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// ReadFile reads the file and its *_file secrets. Default: os.ReadFile.
	ReadFile func(string) ([]byte, error)
	// Offline checks everything but the values the file refers to: a
	// ${NAME} reference or a *_file path is accepted unresolved, and
	// Catalog.Unresolved lists them. A Catalog so loaded is for checking,
	// not for running: its secrets are empty.
	Offline bool
	// RootCAs verifies the upstreams' certificates, beside the system's.
	RootCAs *x509.CertPool
}

// Catalog is a catalog file (the YAML of TOKENKEEPER_CONFIG, README
// "Several tokens") as a Config takes it: its Tokens go to Config.Tokens,
// its Keys to HTTPConfig.Keys and its Identities to
// HTTPConfig.Security.Identities.
type Catalog struct {
	Tokens     []TokenConfig
	Keys       []Key
	Identities []Identity
	// Unresolved lists, after an Offline load, the references left
	// unresolved ("$NAME", "file PATH").
	Unresolved []string

	file *catalog.Catalog
}

// LoadCatalog reads the catalog file at path and checks every rule of the
// format: strict YAML, secrets only as ${NAME} or *_file, names, scopes
// and timings. Its error names the file, the line and the field of each
// problem at once; it never holds a secret.
func LoadCatalog(path string, opt CatalogOptions) (*Catalog, error) {
	read := opt.ReadFile
	if read == nil {
		read = os.ReadFile
	}
	data, err := read(path)
	if err != nil {
		return nil, err
	}
	f, err := catalog.Parse(data, catalog.Options{File: path, LookupEnv: opt.LookupEnv, ReadFile: read, Offline: opt.Offline})
	if err != nil {
		return nil, err
	}
	c := &Catalog{Unresolved: f.Unresolved, file: f}
	for _, t := range f.Tokens {
		c.Tokens = append(c.Tokens, tokenConfig(t, opt.RootCAs))
	}
	for _, k := range f.Keys {
		c.Keys = append(c.Keys, Key{Name: k.Name, Value: k.Value, Role: Role(k.Role), Tokens: k.Tokens})
	}
	for _, id := range f.Identities {
		c.Identities = append(c.Identities, Identity{Name: id.Name, Subject: id.Subject, Role: Role(id.Role), Tokens: id.Tokens})
	}
	return c, nil
}

// Describe writes a table of the catalog for people: each token with its
// source, upstream, timings and limits, where its secrets come from, then
// each key with its role and scope. It never writes a secret.
func (c *Catalog) Describe(w io.Writer) error { return c.file.Describe(w) }

// tokenConfig is t as the Keeper takes it.
func tokenConfig(t catalog.Token, roots *x509.CertPool) TokenConfig {
	tc := TokenConfig{
		Name: t.Name, Optional: !t.Required, PerDevice: t.Mode == catalog.ModePerDevice,
		MintsPerMinute: t.MintsPerMinute, MintsPerDeviceHour: t.MintsPerDeviceHour,
		ServeMargin: t.ServeMargin, RefreshBefore: t.RefreshBefore, AuthPerMinute: t.AuthPerMinute,
	}
	switch {
	case t.RDP != nil:
		r := t.RDP
		tc.RDP = &upstream.Config{
			BaseURL: r.BaseURL, Auth: upstream.AuthVersion(r.Auth), ClientID: r.ClientID, ClientSecret: r.ClientSecret,
			Username: r.Username, Password: r.Password, Scope: r.Scope,
			LivenessPath: r.LivenessPath, LivenessMethod: r.LivenessMethod,
			DefaultLifetime: t.Lifetime, Timeout: t.Timeout, RootCAs: roots,
		}
	case t.OAuth2 != nil:
		o := t.OAuth2
		params := url.Values{}
		for k, v := range o.Params {
			params.Set(k, v)
		}
		if o.Audience != "" {
			params.Set("audience", o.Audience)
		}
		if o.Resource != "" {
			params.Set("resource", o.Resource)
		}
		tc.OAuth2 = &upstream.OAuth2Config{
			TokenURL: o.TokenURL, ClientID: o.ClientID, ClientSecret: o.ClientSecret,
			Scopes: o.Scopes, EndpointParams: params, AuthStyle: o.AuthStyle,
			DefaultLifetime: t.Lifetime, Timeout: t.Timeout, RootCAs: roots,
		}
	}
	return tc
}
