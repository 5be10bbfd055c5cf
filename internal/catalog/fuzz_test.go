package catalog_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/catalog"
)

// FuzzParse checks that Parse never panics, that its errors are made of
// *Error values with a line, and that neither its errors nor Describe show
// a secret the file does not itself hold.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validFile))
	f.Add([]byte(oauth2File))
	f.Add([]byte(rdpFile))
	f.Add([]byte(keyFile))
	for _, c := range errCases {
		f.Add([]byte(c.file))
	}
	f.Add([]byte("tokens: &a [*a]\n"))
	f.Add([]byte("tokens:\n  - &t {name: a, source: oauth2, oauth2: *t}\n"))
	f.Add([]byte("a: &a [*a, *a]\nb: &b [*a, *a]\ntokens: *b\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := catalog.Parse(data, opts)
		if err == nil {
			if c == nil || len(c.Tokens) == 0 {
				t.Fatalf("no error and no token: %+v", c)
			}
			var out bytes.Buffer
			if err := c.Describe(&out); err != nil {
				t.Fatal(err)
			}
			// A file's content lands only in secret fields; an environment
			// variable may be named by any field, so only files are checked.
			for _, s := range []string{rdpSecret, mobileKey, scraperKey, billingKey} {
				if strings.Contains(out.String(), s) && !bytes.Contains(data, []byte(s)) {
					t.Fatalf("Describe shows %q:\n%s", s, out.String())
				}
			}
			return
		}
		if c != nil {
			t.Fatal("a catalog with an error")
		}
		for _, e := range problems(t, err) {
			if e.Line < 0 || e.Problem == "" {
				t.Fatalf("problem %#v", e)
			}
		}
		for _, s := range secrets {
			if strings.Contains(err.Error(), s) && !bytes.Contains(data, []byte(s)) {
				t.Fatalf("error shows %q:\n%v", s, err)
			}
		}
	})
}
