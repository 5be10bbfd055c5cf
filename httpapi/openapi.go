package httpapi

import (
	_ "embed"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// openAPI is the OpenAPI 3 description of every route, served at
// GET /openapi.json. A test checks it against the routes the server
// registers, both ways.
//
//go:embed openapi.json
var openAPI []byte

// getOpenAPI answers GET /openapi.json: the document, to anyone.
func (s *Server) getOpenAPI(c echo.Context, _ time.Time) error {
	s.writeJSON(c, http.StatusOK, openAPI)
	return nil
}
