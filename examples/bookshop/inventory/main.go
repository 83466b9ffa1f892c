// inventory: how many copies of each book the warehouse holds. A compiled service: innerloop
// rebuilds and redeploys its image when a source file changes (there is nothing to sync).
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"

	"github.com/julienschmidt/httprouter"
)

const greeting = "hello from inventory"

type item struct {
	BookID  int  `json:"bookId"`
	Copies  int  `json:"copies"`
	InStock bool `json:"inStock"`
}

var copies = map[int]int{1: 3, 2: 5, 3: 0}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(body); err != nil {
		log.Printf("inventory: writing the answer: %v", err)
	}
}

func inventory(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	items := make([]item, 0, len(copies))
	for id := 1; id <= len(copies); id++ {
		items = append(items, item{BookID: id, Copies: copies[id], InStock: copies[id] > 0})
	}
	pod, _ := os.Hostname()
	log.Printf("inventory: %s %s", r.Method, r.URL.Path)
	writeJSON(w, http.StatusOK, map[string]any{"service": "inventory", "pod": pod, "greeting": greeting, "items": items})
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	router := httprouter.New()
	router.GET("/healthz", func(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) {
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	})
	router.GET("/inventory", inventory)
	router.NotFound = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no route " + r.URL.Path})
	})
	log.SetFlags(0)
	log.Printf("inventory listening on :%s", port)
	log.Fatal(http.ListenAndServe(":"+port, router))
}
