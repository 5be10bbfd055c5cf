package catalog_test

import (
	"errors"
	"io/fs"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/catalog"
)

// Distinctive secret values: no output may ever contain one of them.
const (
	rdpSecret     = "rdp-SECRET-c0ffee"
	rdpPassword   = "pw-SECRET-b16b00b5"
	billingSecret = "billing-SECRET-deadbeef"
	opsKey        = "ops-SECRET-8badf00d"
	mobileKey     = "mobile-SECRET-feedface"
	scraperKey    = "scraper-SECRET-abad1dea"
	billingKey    = "billing-key-SECRET-0ddba11"
)

var secrets = []string{rdpSecret, rdpPassword, billingSecret, opsKey, mobileKey, scraperKey, billingKey}

// env is the fake environment of the tests.
var env = map[string]string{
	"RDP_CLIENT_ID":  "rdp-app-key",
	"RDP_PASSWORD":   rdpPassword,
	"BILLING_SECRET": billingSecret,
	"OPS_KEY":        opsKey,
	"SECRET":         billingSecret,
	"SECRET2":        opsKey,
	"IDP_URL":        "https://idp.example.com/token",
	"EMPTY":          "",
}

// files are the fake secret files of the tests.
var files = map[string]string{
	"/run/secrets/rdp":        rdpSecret + "\n",
	"/run/secrets/mobile_key": mobileKey + "\r\n",
	"/run/secrets/scraper":    scraperKey,
	"/run/secrets/ops":        opsKey + "\n",
	"/run/secrets/billing":    billingKey,
	"/empty":                  "",
	"/newline":                "\n",
}

func lookupEnv(name string) (string, bool) {
	v, ok := env[name]
	return v, ok
}

func readFile(path string) ([]byte, error) {
	if v, ok := files[path]; ok {
		return []byte(v), nil
	}
	return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
}

var opts = catalog.Options{LookupEnv: lookupEnv, ReadFile: readFile}

// problems returns the *Error values err is made of, failing t if err
// holds anything else.
func problems(t testing.TB, err error) []*catalog.Error {
	t.Helper()
	if err == nil {
		return nil
	}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	out := make([]*catalog.Error, 0, len(errs))
	for _, e := range errs {
		var ce *catalog.Error
		if !errors.As(e, &ce) || ce != e {
			t.Fatalf("%T is not a *catalog.Error: %v", e, e)
		}
		out = append(out, ce)
	}
	return out
}
