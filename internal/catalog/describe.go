package catalog

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Describe writes a table of the catalog for people: each token with its
// source, upstream, timings and limits, where its secrets come from, then
// each key with its role and scope. It never writes a secret, only where
// each comes from.
func (c *Catalog) Describe(w io.Writer) error {
	if c == nil {
		c = &Catalog{}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(cells ...string) {
		for i, s := range cells {
			cells[i] = cell(s)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	row("TOKEN", "SOURCE", "MODE", "UPSTREAM", "AUTH", "SCOPES", "AUDIENCE", "LIFETIME",
		"REFRESH_BEFORE", "SERVE_MARGIN", "TIMEOUT", "AUTH_PER_MINUTE", "REQUIRED")
	for _, t := range c.Tokens {
		row(t.describe()...)
	}
	fmt.Fprintln(tw)
	row("TOKEN", "SECRET", "FROM")
	for _, t := range c.Tokens {
		for _, s := range t.secrets() {
			row(t.Name, s[0], s[1])
		}
	}
	fmt.Fprintln(tw)
	row("KEY", "ROLE", "SCOPE", "KEY_FROM")
	for _, k := range c.Keys {
		row(k.Name, k.Role, scopeText(k.Tokens), shownFrom(k.Value, k.valueFrom))
	}
	return tw.Flush()
}

// describe returns t's row of Describe's token table.
func (t Token) describe() []string {
	var upstream, auth, scopes, audience string
	switch {
	case t.RDP != nil:
		upstream, auth, scopes = t.RDP.BaseURL, t.RDP.Auth, t.RDP.Scope
	case t.OAuth2 != nil:
		upstream, auth = t.OAuth2.TokenURL, t.OAuth2.AuthStyle
		scopes, audience = strings.Join(t.OAuth2.Scopes, " "), t.OAuth2.Audience
		if r := t.OAuth2.Resource; r != "" {
			audience = strings.TrimPrefix(audience+" resource="+r, " ")
		}
	}
	mode := t.Mode
	if t.Mode == ModePerDevice {
		mode = fmt.Sprintf("%s (mints: %s/min fleet, %s/h per device)", mode, capText(t.MintsPerMinute), capText(t.MintsPerDeviceHour))
	}
	return []string{t.Name, t.Source, mode, upstream, auth, scopes, audience,
		short(t.Lifetime), short(t.RefreshBefore), short(t.ServeMargin), short(t.Timeout),
		strconv.Itoa(t.AuthPerMinute), yesNo(t.Required)}
}

// secrets returns the secrets of t's upstream, each as its field and
// where it comes from: those given, and those its auth needs.
func (t Token) secrets() [][2]string {
	var out [][2]string
	add := func(field, value, from string, needed bool) {
		if needed || value != "" || from != "" {
			out = append(out, [2]string{field, shownFrom(value, from)})
		}
	}
	if r := t.RDP; r != nil {
		add("client_secret", r.ClientSecret, r.clientSecretFrom, r.Auth != "v1")
		add("password", r.Password, r.passwordFrom, r.Auth == "v1")
	}
	if o := t.OAuth2; o != nil {
		add("client_secret", o.ClientSecret, o.clientSecretFrom, true)
	}
	return out
}

// cell makes s fit in one cell of a table: "-" when empty, control
// characters quoted.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return strconv.Quote(s)
	}
	return s
}

// short writes d without its zero units: 1h, 15m, 1h30m, 10s.
func short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// scopeText shows a key's scope: "*" for every token.
func scopeText(tokens []string) string {
	if tokens == nil {
		return "*"
	}
	return strings.Join(tokens, ",")
}

// String shows r without its secrets, only where they come from.
func (r RDP) String() string {
	return fmt.Sprintf("rdp{base_url=%s auth=%s client_id=%s client_secret=%s username=%s password=%s "+
		"scope=%s liveness=%s %s}", r.BaseURL, r.Auth, r.ClientID, shownFrom(r.ClientSecret, r.clientSecretFrom),
		r.Username, shownFrom(r.Password, r.passwordFrom), r.Scope, r.LivenessMethod, r.LivenessPath)
}

// String shows o without its secret, only where it comes from, and the
// names of its params without their values.
func (o OAuth2) String() string {
	params := make([]string, 0, len(o.Params))
	for k := range o.Params {
		params = append(params, k)
	}
	slices.Sort(params)
	return fmt.Sprintf("oauth2{token_url=%s client_id=%s client_secret=%s scopes=%v audience=%s resource=%s "+
		"params=%v auth_style=%s}", o.TokenURL, o.ClientID, shownFrom(o.ClientSecret, o.clientSecretFrom),
		o.Scopes, o.Audience, o.Resource, params, o.AuthStyle)
}

// String shows k without its value, only where it comes from.
func (k Key) String() string {
	return fmt.Sprintf("key{name=%s role=%s tokens=%s key=%s}", k.Name, k.Role, scopeText(k.Tokens),
		shownFrom(k.Value, k.valueFrom))
}

// Format writes String whatever the verb (%v, %+v, %#v, %s, %d...), so
// that no verb prints the secrets.
func (r RDP) Format(f fmt.State, _ rune) { io.WriteString(f, r.String()) }

// Format writes String whatever the verb, so that no verb prints the
// secret.
func (o OAuth2) Format(f fmt.State, _ rune) { io.WriteString(f, o.String()) }

// Format writes String whatever the verb, so that no verb prints the key.
func (k Key) Format(f fmt.State, _ rune) { io.WriteString(f, k.String()) }

// LogValue logs String, so that no slog handler logs the secrets.
func (r RDP) LogValue() slog.Value { return slog.StringValue(r.String()) }

// LogValue logs String, so that no slog handler logs the secret.
func (o OAuth2) LogValue() slog.Value { return slog.StringValue(o.String()) }

// LogValue logs String, so that no slog handler logs the key.
func (k Key) LogValue() slog.Value { return slog.StringValue(k.String()) }

// capText shows a mint budget; 0 is no cap.
func capText(n int) string {
	if n == 0 {
		return "no cap"
	}
	return strconv.Itoa(n)
}
