// Unit checks of oriel-client.js's retry policy, run inside Chromium by tests/test_browser_client.py.
// The fetch, sleep, clock and random source are injected (the client's own seams), so nothing waits.
import { createClient, OrielError, parseRetryAfter } from "/static/js/oriel-client.js";

function envelope(status, code, recoverable, extra = {}) {
  return { error: { code, message: code, status, recoverable, details: {}, request_id: "r-" + status, ...extra } };
}

function reply(status, body, headers = {}) {
  const text = body === undefined ? "" : typeof body === "string" ? body : JSON.stringify(body);
  const type = typeof body === "string" ? "text/html" : "application/json";
  return () => new Response(text, { status, headers: { "Content-Type": type, ...headers } });
}

const ok = reply(200, { done: true });
const networkDown = () => {
  throw new TypeError("Failed to fetch");
};

/** A client whose fetch plays `script` (one step per attempt) and records every call and wait. */
function scripted(script, options = {}) {
  const calls = [];
  const waits = [];
  let clock = 0;
  const client = createClient({
    token: "secret-token",
    fetch: async (url, init) => {
      calls.push({ url, method: init.method, headers: new Headers(init.headers) });
      const step = script[Math.min(calls.length - 1, script.length - 1)];
      return step();
    },
    sleep: async (ms) => {
      waits.push(ms);
      clock += ms;
    },
    now: () => clock,
    random: () => 0.5,
    ...options,
  });
  return { client, calls, waits };
}

async function outcome(promise) {
  try {
    return { value: await promise };
  } catch (error) {
    return { error };
  }
}

const checks = {
  async "422 401 403 404 402 409 500 are not retried"(fail) {
    const cases = [
      [422, "VALIDATION_ERROR", false],
      [401, "TOKEN_EXPIRED", false],
      [403, "PERMISSION_DENIED", false],
      [404, "NOT_FOUND", false],
      [402, "INSUFFICIENT_CREDITS", false],
      [402, "PAYMENT_DECLINED", true], // recoverable with another card, not by sending the same request
      [409, "CONFLICT", false],
      [500, "INTERNAL_ERROR", false],
      [503, "SERVICE_NOT_CONFIGURED", false],
    ];
    for (const [status, code, recoverable] of cases) {
      const { client, calls, waits } = scripted([reply(status, envelope(status, code, recoverable)), ok]);
      const { error } = await outcome(client.post("/api/x", { a: 1 }));
      if (!(error instanceof OrielError) || error.code !== code || error.status !== status) fail(`${status}: ${error}`);
      if (calls.length !== 1 || waits.length !== 0) fail(`${status} ${code} was retried (${calls.length} calls)`);
    }
  },

  async "retryable failures are retried with one Idempotency-Key"(fail) {
    const steps = [
      networkDown,
      reply(503, envelope(503, "CIRCUIT_OPEN", true, { retry_after: 2 }), { "Retry-After": "2" }),
      reply(409, envelope(409, "IDEMPOTENCY_REQUEST_IN_PROGRESS", true, { retry_after: 1 }), { "Retry-After": "1" }),
      reply(502, "<html>bad gateway</html>"),
      ok,
    ];
    const { client, calls, waits } = scripted(steps, { maxAttempts: 5 });
    const { value, error } = await outcome(client.post("/api/renders", { upload_id: 1 }));
    if (error) return fail(`gave up: ${error.code}`);
    if (value.attempts !== 5 || calls.length !== 5) fail(`attempts ${value.attempts}`);
    const keys = new Set(calls.map((c) => c.headers.get("Idempotency-Key")));
    if (keys.size !== 1 || !value.idempotencyKey || !keys.has(value.idempotencyKey)) fail(`keys ${[...keys]}`);
    // network: jitter 0.5 * 250; Retry-After 2 s and 1 s exactly; 502 without a body: jitter 0.5 * 2000.
    if (JSON.stringify(waits) !== JSON.stringify([125, 2000, 1000, 1000])) fail(`waits ${waits}`);
  },

  async "a fresh key per logical call, none on reads, the token only in a header"(fail) {
    const { client, calls } = scripted([ok]);
    await client.post("/api/a", {});
    await client.post("/api/a", {});
    await client.get("/api/b");
    const [a, b, c] = calls;
    if (a.headers.get("Idempotency-Key") === b.headers.get("Idempotency-Key")) fail("two calls shared a key");
    if (c.headers.has("Idempotency-Key")) fail("a GET carried a key");
    if (calls.some((x) => x.headers.get("Authorization") !== "Bearer secret-token")) fail("no bearer header");
    if (calls.some((x) => String(x.url).includes("secret-token"))) fail("token in a URL");
    const own = scripted([ok]);
    await own.client.post("/api/a", {}, { idempotencyKey: "mine-1" });
    if (own.calls[0].headers.get("Idempotency-Key") !== "mine-1") fail("explicit key ignored");
  },

  async "full jitter grows and is capped"(fail) {
    const { client, waits } = scripted([networkDown], { maxAttempts: 6, baseDelayMs: 100, maxDelayMs: 500 });
    const { error } = await outcome(client.get("/api/x"));
    if (!error || error.code !== "NETWORK_ERROR" || error.attempts !== 6) fail(`error ${error && error.code}`);
    if (JSON.stringify(waits) !== JSON.stringify([50, 100, 200, 250, 250])) fail(`waits ${waits}`);
  },

  async "a wait past the deadline is not started"(fail) {
    const limited = reply(429, envelope(429, "RATE_LIMITED", true, { retry_after: 120 }), { "Retry-After": "120" });
    const { client, calls, waits } = scripted([limited, ok], { deadlineMs: 30000 });
    const { error } = await outcome(client.post("/api/x", {}));
    if (!error || error.code !== "RATE_LIMITED" || error.retryAfter !== 120) fail(`error ${error && error.code}`);
    if (calls.length !== 1 || waits.length !== 0) fail("waited beyond the deadline");
  },

  async "retry: false sends once"(fail) {
    const { client, calls } = scripted([networkDown, ok]);
    const { error } = await outcome(client.post("/api/x", {}, { retry: false }));
    if (!error || calls.length !== 1) fail("retried despite retry: false");
  },

  async "Retry-After as seconds or an HTTP date"(fail) {
    if (parseRetryAfter("7") !== 7) fail("seconds");
    const now = Date.parse("2026-11-22T10:00:00Z");
    if (parseRetryAfter("Sun, 22 Nov 2026 10:00:09 GMT", now) !== 9) fail("date");
    if (parseRetryAfter("soon") !== null || parseRetryAfter(null) !== null) fail("garbage");
  },
};

/** Run every check; the names of the failed ones with their reasons (empty when all pass). */
export async function run() {
  const failures = [];
  for (const [name, check] of Object.entries(checks)) {
    const reasons = [];
    try {
      await check((reason) => reasons.push(reason));
    } catch (error) {
      reasons.push(`threw ${error}`);
    }
    if (reasons.length) failures.push(`${name}: ${reasons.join("; ")}`);
  }
  return { ran: Object.keys(checks).length, failures };
}
