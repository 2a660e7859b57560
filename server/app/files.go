package app

import (
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/graph"
)

// serveFile answers GET /files/{id} and /files/contacts/{id}/photo for an
// authenticated caller allowed to see the file (R24).
func (a *App) serveFile(open func(r *http.Request, id int) (*desk.StoredFile, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.PathValue("id"))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		f, err := open(r, id)
		var de *desk.Error
		switch {
		case err == nil:
		case errors.As(err, &de) && de.Code == desk.CodeUnauthenticated:
			graph.WriteError(w, http.StatusUnauthorized, de.Code, de.Message)
			return
		case errors.As(err, &de) && (de.Code == desk.CodeNotFound || de.Code == desk.CodeForbidden):
			graph.WriteError(w, http.StatusNotFound, desk.CodeNotFound, "not found")
			return
		case desk.CallerEnded(r.Context(), err):
			// The client hung up (or the server shut down) during the
			// look-up: not a failure of the server.
			a.Log.Info("serve file: the request ended first", "id", id, "err", err)
			graph.WriteError(w, http.StatusServiceUnavailable, graph.CodeCancelled, "the request ended before the file was found")
			return
		default:
			a.Log.Error("serve file", "id", id, "err", err)
			graph.WriteError(w, http.StatusInternalServerError, desk.CodeInternal, "internal error")
			return
		}
		defer f.Body.Close()
		if f.MimeType != "" {
			w.Header().Set("Content-Type", f.MimeType)
		} else {
			w.Header().Set("Content-Type", "application/octet-stream")
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "private, max-age=3600")
		if f.Name != "" {
			w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": f.Name}))
		}
		_, _ = io.Copy(w, f.Body)
	}
}
