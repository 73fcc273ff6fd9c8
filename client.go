package wsnotify

import (
	_ "embed"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
)

// The browser client: a dependency-free ES module that reconnects with
// backoff, resumes with since, dedupes by id and reports truncated history.
var (
	//go:embed client/wsnotify.js
	clientJS []byte
	//go:embed client/wsnotify.d.ts
	clientTypes []byte
)

// Mount registers the WebSocket route at path, and the browser client beside
// it at path+"/client.js" (with TypeScript declarations at
// path+"/client.d.ts"), so a page can
//
//	import { connect } from "/ws/client.js";
func (h *Hub) Mount(r gin.IRoutes, path string) {
	path = strings.TrimSuffix(path, "/")
	r.GET(path, h.Handler())
	r.GET(path+"/client.js", ClientScript())
	r.GET(path+"/client.d.ts", ClientTypes())
}

// ClientScript serves the browser client module.
func ClientScript() gin.HandlerFunc {
	return serveAsset("text/javascript; charset=utf-8", clientJS)
}

// ClientTypes serves the TypeScript declarations of the browser client.
func ClientTypes() gin.HandlerFunc {
	return serveAsset("application/typescript; charset=utf-8", clientTypes)
}

func serveAsset(contentType string, body []byte) gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Header("Cache-Control", "no-cache")
		c.Data(http.StatusOK, contentType, body)
	}
}
