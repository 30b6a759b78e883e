// Unit checks of oriel-client.js's retry policy, run inside Chromium by tests/system/test_browser_client.py.
// The fetch, sleep, clock and random source are injected (the client's own seams), so nothing waits.
import {
  DEDUPLICATED_WRITES,
  OrielError,
  backoffDelayMs,
  createClient,
  isRepeatable,
  parseRetryAfter,
} from "/static/js/oriel-client.js";

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

/** A client whose fetch asks `answer(call, calls)` for each attempt (by URL and headers); records calls and waits. */
function routed(answer, options = {}) {
  const calls = [];
  const waits = [];
  const lost = [];
  let clock = 0;
  const client = createClient({
    token: "old-access",
    refreshToken: "the-refresh",
    fetch: async (url, init) => {
      const call = { url: String(url), method: init.method, headers: new Headers(init.headers) };
      call.bearer = (call.headers.get("Authorization") || "").replace(/^Bearer /, "") || null;
      calls.push(call);
      await Promise.resolve(); // let concurrent calls interleave as on a real network
      return answer(call, calls)();
    },
    sleep: async (ms) => {
      waits.push(ms);
      clock += ms;
    },
    now: () => clock,
    random: () => 0.5,
    onAuthLost: (event) => lost.push(event),
    ...options,
  });
  return { client, calls, waits, lost };
}

const expired = reply(401, envelope(401, "TOKEN_EXPIRED", false));
const isRefresh = (call) => call.url.endsWith("/api/auth/refresh");
const refreshCalls = (calls) => calls.filter(isRefresh);
const fresh = (access) => reply(200, { access_token: access, token_type: "Bearer", expires_in: 900 });

/** The API of a server whose access tokens before `valid` are expired; `refresh` answers the refresh. */
function expiringServer(valid, refresh) {
  return (call) => {
    if (isRefresh(call)) return refresh(call);
    return call.bearer === valid ? reply(200, { who: call.bearer, path: call.url }) : expired;
  };
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
    // network: jitter 0.5 * 250; Retry-After 2 s and 1 s plus jitter 0.5 * 500 and 0.5 * 1000 (#13 point 12);
    // 502 without a body: jitter 0.5 * 2000.
    if (JSON.stringify(waits) !== JSON.stringify([125, 2250, 1500, 1000])) fail(`waits ${waits}`);
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
  // --- #13 point 12: token refresh --------------------------------------------------------------------------

  async "point12 refresh: TOKEN_EXPIRED refreshes once and sends the write again with the new token and its key"(
    fail,
  ) {
    const { client, calls, waits } = routed(expiringServer("new-access", () => fresh("new-access")));
    const { value, error } = await outcome(client.post("/api/renders", { upload_id: 1 }));
    if (error) return fail(`failed: ${error.code} ${error.message}`);
    const shape = calls.map((c) => `${c.method} ${new URL(c.url, "http://x").pathname} ${c.bearer}`);
    const expected = [
      "POST /api/renders old-access",
      "POST /api/auth/refresh the-refresh",
      "POST /api/renders new-access",
    ];
    if (JSON.stringify(shape) !== JSON.stringify(expected)) fail(`calls ${shape}`);
    const [first, , again] = calls;
    if (first.headers.get("Idempotency-Key") !== again.headers.get("Idempotency-Key")) fail("the resend has a new key");
    if (value.idempotencyKey !== first.headers.get("Idempotency-Key")) fail("result key differs");
    if (value.attempts !== 2 || waits.length !== 0) fail(`attempts ${value.attempts}, waits ${waits}`);
    await client.get("/api/me");
    if (calls.at(-1).bearer !== "new-access" || refreshCalls(calls).length !== 1) fail("the new token is not kept");
    // The resend is no retry (the 401 proves nothing ran): it happens with retry: false too.
    const once = routed(expiringServer("new-access", () => fresh("new-access")));
    const { error: onceError } = await outcome(once.client.post("/api/errors/report", {}, { retry: false }));
    if (onceError || once.calls.length !== 3) fail(`retry: false: ${onceError}, ${once.calls.length} calls`);
  },

  async "point12 refresh: concurrent calls share one refresh"(fail) {
    let release;
    const gate = new Promise((resolve) => (release = resolve));
    const { client, calls } = routed(
      expiringServer("new-access", () => async () => {
        await gate; // the refresh is slow: every call meets TOKEN_EXPIRED while it runs
        return fresh("new-access")();
      }),
    );
    const pending = [
      client.get("/api/me"),
      client.get("/api/uploads"),
      client.post("/api/renders", {}),
      client.get("/api/renders"),
    ];
    setTimeout(release, 20);
    const results = await Promise.all(pending.map(outcome));
    const failed = results.filter((r) => r.error).map((r) => r.error.code);
    if (failed.length) fail(`failed: ${failed}`);
    if (refreshCalls(calls).length !== 1) fail(`${refreshCalls(calls).length} refreshes`);
    if (calls.length !== 9) fail(`${calls.length} calls (4 refused, 1 refresh, 4 resent)`);
    // One whose TOKEN_EXPIRED comes back after the refresh finished resends with the new token, no second refresh.
    let releaseA;
    const gateA = new Promise((resolve) => (releaseA = resolve));
    const late = routed((call) => {
      if (isRefresh(call)) return fresh("newer");
      if (call.bearer === "newer") return ok;
      if (call.url.endsWith("/api/a")) return async () => (await gateA, expired());
      return expired;
    });
    const slow = outcome(late.client.get("/api/a"));
    await late.client.get("/api/b"); // refused, refreshed, resent while /api/a is still out
    releaseA();
    const { error: lateError } = await slow;
    const sentA = late.calls.filter((c) => c.url.endsWith("/api/a")).map((c) => c.bearer);
    if (lateError || JSON.stringify(sentA) !== JSON.stringify(["old-access", "newer"])) fail(`late: ${sentA}`);
    if (refreshCalls(late.calls).length !== 1) fail(`late: ${refreshCalls(late.calls).length} refreshes`);
  },

  async "point12 refresh: at most once per call, never a loop"(fail) {
    // The server keeps saying TOKEN_EXPIRED even to the new token (a clock far off, say).
    const { client, calls } = routed((call) => (isRefresh(call) ? fresh("new-access") : expired));
    const { error } = await outcome(client.get("/api/me"));
    if (!error || error.code !== "TOKEN_EXPIRED" || error.status !== 401) fail(`error ${error && error.code}`);
    if (calls.length !== 3 || refreshCalls(calls).length !== 1) fail(`${calls.length} calls`);
    // Without a refresh token, TOKEN_EXPIRED goes straight to the caller.
    const bare = routed(() => expired, { refreshToken: null });
    const { error: plain } = await outcome(bare.client.get("/api/me"));
    if (!plain || plain.code !== "TOKEN_EXPIRED" || bare.calls.length !== 1) fail("refreshed without a refresh token");
    // A refresh never refreshes itself (auth: false), and other 401s do not refresh.
    const revoked = routed(() => reply(401, envelope(401, "TOKEN_REVOKED", false)));
    await outcome(revoked.client.get("/api/me"));
    if (revoked.calls.length !== 1) fail("TOKEN_REVOKED triggered a refresh");
    const noAuth = routed(expiringServer("x", () => fresh("x")));
    await outcome(noAuth.client.get("/api/public", { auth: false }));
    if (noAuth.calls.length !== 1 || noAuth.calls[0].bearer !== null) fail("auth: false sent a token or refreshed");
  },

  async "point12 refresh: a refused refresh token ends the session: tokens dropped, onAuthLost, SESSION_ENDED"(fail) {
    const refused = reply(401, envelope(401, "TOKEN_REVOKED", false));
    const { client, calls, lost } = routed(expiringServer("never", () => refused));
    const pending = [client.get("/api/me"), client.post("/api/renders", {})];
    const results = await Promise.all(pending.map(outcome));
    for (const { error } of results) {
      if (!error || error.code !== "SESSION_ENDED" || error.status !== 401) fail(`error ${error && error.code}`);
      else if (!(error.cause instanceof OrielError) || error.cause.code !== "TOKEN_REVOKED") fail("cause: not the 401");
      else if (error.details.refresh_code !== "TOKEN_REVOKED" || !/sign in/.test(error.message)) fail(error.message);
    }
    if (refreshCalls(calls).length !== 1) fail(`${refreshCalls(calls).length} refreshes`);
    if (client.hasToken() || client.hasRefreshToken()) fail("tokens kept");
    if (lost.length !== 1 || lost[0].error.code !== "TOKEN_REVOKED") fail(`onAuthLost ${lost.length}`);
    const before = calls.length;
    await outcome(client.get("/api/me"));
    if (calls.length !== before + 1 || calls.at(-1).headers.has("Authorization")) fail("a token was sent after it");
  },

  async "point12 refresh: a transient refresh failure fails the call but keeps the tokens"(fail) {
    let refreshUp = false;
    const { client, calls, lost } = routed(
      expiringServer("new-access", () => (refreshUp ? fresh("new-access") : networkDown)),
      { maxAttempts: 2 },
    );
    const { error } = await outcome(client.post("/api/auth/logout", {}));
    if (!error || error.code !== "NETWORK_ERROR") return fail(`error ${error && error.code}`);
    if (error.ambiguous) fail("the logout was refused (401): its outcome is known, not ambiguous");
    if (!/could not be refreshed/.test(error.message)) fail(error.message);
    if (refreshCalls(calls).length !== 2) fail(`${refreshCalls(calls).length} refreshes, not 2 (its own retry)`);
    if (!client.hasToken() || !client.hasRefreshToken() || lost.length) fail("tokens dropped on a network failure");
    refreshUp = true;
    const { error: later } = await outcome(client.get("/api/me"));
    if (later || calls.at(-1).bearer !== "new-access") fail("a later call did not refresh");
  },

  async "point12 refresh: signing out during a refresh is not undone by its answer"(fail) {
    let release;
    const gate = new Promise((resolve) => (release = resolve));
    const { client } = routed(
      expiringServer("new-access", () => async () => {
        await gate;
        return fresh("new-access")();
      }),
    );
    const pending = outcome(client.get("/api/me"));
    await new Promise((resolve) => setTimeout(resolve, 5));
    client.setToken(null); // sign out while the refresh is out
    release();
    await pending;
    if (client.hasToken() || client.hasRefreshToken()) fail("the refresh answer brought the token back");
    client.setTokens({ access: "a", refresh: "r" });
    client.setToken("b");
    if (!client.hasRefreshToken()) fail("setToken(access) dropped the refresh token");
  },

  // --- #13 point 12: no repeat of a write the server does not de-duplicate ---------------------------------

  async "point12 ambiguous: a write the server does not de-duplicate is never sent again after it may have run"(fail) {
    const ambiguous = [
      ["network", networkDown],
      ["bare 502", reply(502, "<html>bad gateway</html>")],
      ["bare 503", reply(503, "<html>unavailable</html>")],
      ["bare 504", reply(504, "<html>gateway timeout</html>")],
    ];
    const writes = ["/api/auth/register", "/api/auth/login", "/api/auth/logout", "/api/errors/report", "/api/x"];
    for (const [label, failure] of ambiguous) {
      for (const path of writes) {
        const { client, calls, waits } = scripted([failure, ok]);
        const { error } = await outcome(client.post(path, { message: "boom" }));
        if (!error || calls.length !== 1 || waits.length !== 0) fail(`${label} ${path}: sent ${calls.length} times`);
        else if (!error.ambiguous || !/not sent again/.test(error.message)) fail(`${label} ${path}: ${error.message}`);
        else if (!(error.cause instanceof OrielError)) fail(`${label} ${path}: no cause`);
      }
    }
    // A timed-out attempt is a network failure: it may have reached the server.
    const hung = createClient({
      timeoutMs: 20,
      fetch: (url, init) =>
        new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(init.signal.reason))),
    });
    const { error: timedOut } = await outcome(hung.post("/api/errors/report", { message: "x" }));
    if (!timedOut || timedOut.code !== "NETWORK_ERROR" || !timedOut.ambiguous) fail(`timeout: ${timedOut}`);
  },

  async "point12 ambiguous: de-duplicated writes and reads are sent again with the same key"(fail) {
    const repeatables = [
      ["POST", "/api/uploads"],
      ["POST", "/api/renders"],
      ["POST", "/api/renders?trace=1"],
      ["POST", "/api/payments/checkout"],
      ["GET", "/api/me"],
      ["GET", "/api/uploads?limit=5"],
    ];
    for (const [method, path] of repeatables) {
      const { client, calls } = scripted([networkDown, reply(504, "<html>timeout</html>"), ok]);
      const { value, error } = await outcome(client.request(method, path, method === "GET" ? {} : { json: {} }));
      if (error || value.attempts !== 3) fail(`${method} ${path} was not retried: ${error && error.code}`);
      else if (method !== "GET" && new Set(calls.map((c) => c.headers.get("Idempotency-Key"))).size !== 1) fail("keys");
    }
    const exact = isRepeatable("post", "/api/uploads");
    if (!exact || isRepeatable("POST", "/api/uploads/7") || isRepeatable("DELETE", "/api/renders")) {
      fail("isRepeatable matches more or less than the exact method and path");
    }
    if (!Object.isFrozen(DEDUPLICATED_WRITES)) fail("the default list can be changed by anyone");
  },

  async "point12 ambiguous: definite refusals are retried for any write"(fail) {
    const refusals = [
      reply(429, envelope(429, "RATE_LIMITED", true, { retry_after: 1 }), { "Retry-After": "1" }),
      reply(503, envelope(503, "CIRCUIT_OPEN", true, { retry_after: 1 }), { "Retry-After": "1" }),
      reply(503, envelope(503, "DATABASE_UNAVAILABLE", true)),
      reply(409, envelope(409, "IDEMPOTENCY_REQUEST_IN_PROGRESS", true, { retry_after: 1 })),
      reply(408, "<html>request timeout</html>"),
    ];
    for (const refusal of refusals) {
      const { client, calls } = scripted([refusal, ok]);
      const { value, error } = await outcome(client.post("/api/auth/register", { email: "a@b.c", password: "x" }));
      if (error || value.attempts !== 2 || calls.length !== 2) fail(`not retried: ${error && error.code}`);
    }
  },

  async "point12 ambiguous: the per-call option and the client's list override the default"(fail) {
    const forced = scripted([networkDown, ok]);
    const { error: e1 } = await outcome(forced.client.post("/api/errors/report", {}, { repeatable: true }));
    if (e1 || forced.calls.length !== 2) fail("repeatable: true was not retried");
    const held = scripted([networkDown, ok]);
    const { error: e2 } = await outcome(held.client.post("/api/renders", {}, { repeatable: false }));
    if (!e2 || !e2.ambiguous || held.calls.length !== 1) fail("repeatable: false was retried");
    const deduplicatedWrites = [...DEDUPLICATED_WRITES, /^PUT \/api\/things\/\d+$/];
    const custom = scripted([networkDown, ok], { deduplicatedWrites });
    const { error: e3 } = await outcome(custom.client.put("/api/things/42", {}));
    if (e3 || custom.calls.length !== 2) fail("a custom pattern was not honoured");
  },

  // --- #13 point 12: jitter on top of Retry-After --------------------------------------------------------

  async "point12 jitter: the wait is Retry-After plus a bounded jitter, never less"(fail) {
    const told = new OrielError({ code: "CIRCUIT_OPEN", status: 503, recoverable: true, retryAfter: 2 });
    const at = (r, attempt = 1, extra = {}) => backoffDelayMs(told, attempt, { random: () => r, ...extra });
    if (at(0) !== 2000) fail(`random 0: ${at(0)}`);
    if (at(0.999) !== 2249) fail(`random 0.999: ${at(0.999)}`); // full jitter of the first step (250 ms)
    if (at(0.5, 3) !== 2500) fail(`attempt 3: ${at(0.5, 3)}`);
    if (at(0.999, 20, { maxDelayMs: 8000 }) !== 9992) fail("the jitter is not capped at maxDelayMs");
    // A crowd told the same Retry-After spreads over the jitter window instead of coming back together.
    const crowd = Array.from({ length: 50 }, (_, i) => at(i / 50));
    if (new Set(crowd).size !== 50 || Math.min(...crowd) < 2000 || Math.max(...crowd) >= 2250) fail(`crowd ${crowd}`);
    // Through the client: the envelope's retry_after (no header) gets the jitter too, with injected random.
    const randoms = [0.2, 0.8];
    const limited = reply(429, envelope(429, "RATE_LIMITED", true, { retry_after: 3 }));
    const { client, waits } = scripted([limited, limited, ok], { random: () => randoms.shift() });
    const { error } = await outcome(client.post("/api/auth/login", { email: "a@b.c", password: "x" }));
    if (error) fail(`gave up: ${error.code}`);
    if (JSON.stringify(waits) !== JSON.stringify([3050, 3400])) fail(`waits ${waits}`); // 3000+0.2*250, 3000+0.8*500
  },

};

/** Run the checks whose names start with `prefix` (all by default); the failed ones with their reasons. */
export async function run(prefix = "") {
  const failures = [];
  const chosen = Object.entries(checks).filter(([name]) => name.startsWith(prefix));
  for (const [name, check] of chosen) {
    const reasons = [];
    try {
      await check((reason) => reasons.push(reason));
    } catch (error) {
      reasons.push(`threw ${error && error.stack ? error.stack : error}`);
    }
    if (reasons.length) failures.push(`${name}: ${reasons.join("; ")}`);
  }
  return { ran: chosen.length, names: chosen.map(([name]) => name), failures };
}
