// reviews: readers' ratings per book, an Express app; inventory says which books can be shipped.
"use strict";

const http = require("http");
const os = require("os");
const express = require("express");

const PORT = Number(process.env.PORT || 8080);
const INVENTORY_URL = process.env.INVENTORY_URL || "http://inventory:8080";
const GREETING = "hello from reviews";
// Routing headers are passed on, so personal intercepts further down still match.
const ROUTING_HEADERS = ["baggage", "x-innerloop-user"];

const REVIEWS = [
  { bookId: 1, rating: 4.6, count: 1832 },
  { bookId: 2, rating: 4.4, count: 967 },
  { bookId: 3, rating: 4.2, count: 412 },
];

function fetchInventory(req) {
  const headers = {};
  for (const name of ROUTING_HEADERS) {
    if (req.get(name)) headers[name] = req.get(name);
  }
  return new Promise((resolve, reject) => {
    const call = http.get(`${INVENTORY_URL}/inventory`, { headers, timeout: 5000 }, (resp) => {
      let body = "";
      resp.setEncoding("utf8");
      resp.on("data", (chunk) => (body += chunk));
      resp.on("end", () => {
        if (resp.statusCode !== 200) return reject(new Error(`HTTP ${resp.statusCode}`));
        try {
          resolve(JSON.parse(body));
        } catch (err) {
          reject(err);
        }
      });
    });
    call.on("timeout", () => call.destroy(new Error("no answer within 5 s")));
    call.on("error", reject);
  });
}

const app = express();

app.use((req, res, next) => {
  if (req.path !== "/healthz") {
    // Probes every 2 s would drown the interesting lines.
    res.on("finish", () => console.log(`reviews: ${req.method} ${req.originalUrl} ${res.statusCode}`));
  }
  next();
});

app.get("/healthz", (req, res) => res.json({ ok: true }));

app.get("/reviews", async (req, res) => {
  let inventory;
  try {
    inventory = await fetchInventory(req);
  } catch (err) {
    // Deployed without inventory (or it is down): the ratings still answer, and say so.
    inventory = { service: "inventory", error: `inventory unreachable at ${INVENTORY_URL}: ${err.message}` };
  }
  const stock = new Map((inventory.items || []).map((item) => [item.bookId, item.inStock]));
  const reviews = REVIEWS.map((r) => ({ ...r, inStock: stock.get(r.bookId) ?? null }));
  res.json({ service: "reviews", pod: os.hostname(), greeting: GREETING, reviews, via: [inventory] });
});

app.use((req, res) => res.status(404).json({ error: `no route ${req.path}` }));

const server = app.listen(PORT, () => console.log(`reviews listening on :${PORT}, inventory at ${INVENTORY_URL}`));
// SIGTERM (a rollout, or innerloop restarting the process after a sync): stop at once, not after keep-alives.
process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
