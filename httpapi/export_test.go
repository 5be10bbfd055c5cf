package httpapi

// Exported for the tests of package httpapi_test.
const (
	DigestPrefix     = digestPrefix
	GenerationHeader = generationHeader
)

// Controller is the admin routes' view of the fleet.
type Controller = controller

// For the tests of package httpapi_test.
type (
	Tokens  = tokenSource
	Devices = deviceMinter
)

const (
	UpstreamOK      = upstreamOK
	UpstreamFailing = upstreamFailing
	MinKeyBits      = minKeyBits
)

var KeyBits = keyBits

// Single is the catalog of a fleet that keeps one token, the liveness
// token, from t.
func Single(t tokenSource) []Token { return []Token{{Name: defaultName, Source: t}} }
