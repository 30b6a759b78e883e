/**
 * oriel-client.js: the browser side of the Oriel Signal FX Pro error contract. A dependency-free ES module.
 *
 *   import { createClient, OrielError } from "/static/js/oriel-client.js";
 *   const api = createClient({ baseUrl: "", onAuthLost: () => showSignIn() });   // same origin
 *   const { data } = await api.post("/api/auth/login", { email, password });
 *   api.setTokens({ access: data.access_token, refresh: data.refresh_token });  // memory only, Bearer header
 *   try {
 *     const { data: { render } } = await api.post("/api/renders", { upload_id: 7, preset: "waveform" });
 *   } catch (err) {
 *     if (err instanceof OrielError) show(err.message, err.fields, err.requestId);
 *   }
 *
 * createClient(options) → client. Options (all optional):
 *   baseUrl       prefix for every path ("" = same origin)
 *   token         initial access token, refreshToken its refresh token (or call setTokens later; never in a URL)
 *   refreshPath   where a refresh token buys a new access token (default "/api/auth/refresh")
 *   onAuthLost({error})  called when the client drops its tokens because the server refused the refresh token
 *   deduplicatedWrites   the writes the server de-duplicates (default DEDUPLICATED_WRITES, below)
 *   fetch         the fetch function (default globalThis.fetch)
 *   maxAttempts   attempts per logical call, the first included (default 4)
 *   deadlineMs    total time budget per logical call, waits included (default 30000); a wait that would
 *                 end past it is not started and the last error is thrown
 *   baseDelayMs   first backoff cap (default 250); doubles each attempt up to maxDelayMs (default 8000)
 *   timeoutMs     per-attempt timeout (default 30000); a timed-out attempt counts as a network error
 *   sleep(ms)     → Promise, now() → ms, random() → [0, 1): injectable for tests (defaults: setTimeout,
 *                 performance.now / Date.now, Math.random)
 *   onRetry({attempt, delayMs, error})  called before each wait
 *
 * client.request(method, path, {json, body, headers, idempotencyKey, retry = true, repeatable, auth = true, signal})
 * client.get(path, opts), client.delete(path, opts), client.post(path, json, opts),
 * client.put(path, json, opts), client.patch(path, json, opts), client.upload(path, formData, opts)
 *   → Promise<{status, data, headers, requestId, replayed, attempts, idempotencyKey}>
 *   (`replayed`: the server answered from its idempotency store: `Idempotent-Replayed: true`).
 * client.setTokens({access, refresh}), client.setToken(access | null) (null forgets both tokens),
 * client.hasToken(), client.hasRefreshToken(), client.refreshAccessToken() → Promise<access token>
 *
 * Writes (POST, PUT, PATCH, DELETE) carry an `Idempotency-Key` (crypto.randomUUID(), or opts.idempotencyKey),
 * created once per logical call and REUSED by every retry of it, so the server does the work once even
 * when a response is lost on the way back.
 *
 * Retries: only what can succeed on retry. A network failure or timeout, and 408, 429, 502, 503, 504 and
 * 409 IDEMPOTENCY_REQUEST_IN_PROGRESS are retried unless the envelope says `recoverable: false`; nothing
 * else is (422, 400, 401, 403, 404, 402, 500...). The wait is at least the server's `Retry-After` (seconds
 * or an HTTP date; else the envelope's `retry_after`) plus a full jitter of the backoff step, so clients told
 * the same time do not all come back at once; without one it is the full jitter alone: random(0, step),
 * step = min(maxDelayMs, baseDelayMs * 2^(attempt-1)). An aborted call (opts.signal) is never retried.
 *
 * Ambiguous failures: a network failure, a timeout, or a 502/503/504 WITHOUT our envelope (a proxy's
 * answer, perhaps after the app did the work) may have been processed. Such a failure is retried only
 * when a repeat is harmless: reads (GET, HEAD, OPTIONS) and the writes the server de-duplicates by
 * Idempotency-Key (`@idempotent` on the server), listed in DEDUPLICATED_WRITES. Any other write
 * (register, login, logout, an error report...) fails at once with `ambiguous: true`: it may have
 * happened; look before sending it again. `opts.repeatable` (true or false) overrides the list for one
 * call; `options.deduplicatedWrites` replaces it (strings "METHOD /path", exact, query ignored, or RegExps
 * tested against "METHOD /path"). Definite refusals that prove nothing ran (429, a 503 with our envelope,
 * 409 IDEMPOTENCY_REQUEST_IN_PROGRESS) are retried for every request, as above.
 *
 * Token refresh: holding a refresh token, a call answered 401 TOKEN_EXPIRED refreshes the access token
 * (POST refreshPath, the refresh token as Bearer) and is sent once more with the new token (a write keeps
 * its Idempotency-Key); concurrent calls share one refresh, and a call refreshes at most once (never a
 * loop). If the server refuses the refresh token (401: expired, revoked...), the client forgets both
 * tokens, calls onAuthLost and the call fails with SESSION_ENDED (status 401, `cause`: the refusal). A
 * refresh that fails for a transient reason (network, 503...) fails the call with that error and keeps the
 * tokens, so a later call refreshes again. The resend after a refresh is not a retry: it uses none of
 * maxAttempts and happens with `retry: false` too (the 401 proves nothing ran). Per call, `auth: false`
 * sends none of the client's tokens (only an Authorization header of opts.headers) and never refreshes.
 *
 * Failures reject with OrielError: {code, message, status, fields, details, requestId, recoverable,
 * retryAfter (seconds or null), attempts, ambiguous, cause}. A network failure is code NETWORK_ERROR with
 * status 0; a proxy's bare answer HTTP_<status>; an ended session SESSION_ENDED.
 */

/** The writes the server de-duplicates by Idempotency-Key (its `@idempotent` views): safe to send again. */
export const DEDUPLICATED_WRITES = Object.freeze([
  "POST /api/uploads",
  "POST /api/renders",
  "POST /api/payments/checkout",
]);

const WRITE_METHODS = new Set(["POST", "PUT", "PATCH", "DELETE"]);
const RETRYABLE_STATUSES = new Set([408, 429, 502, 503, 504]);
// A bare (envelope-less) answer with one of these came from something between us and the app, which may
// have given up waiting after the app had already done the work.
const AMBIGUOUS_BARE_STATUSES = new Set([502, 503, 504]);
const IN_PROGRESS = "IDEMPOTENCY_REQUEST_IN_PROGRESS";
const TOKEN_EXPIRED = "TOKEN_EXPIRED";

/** An API failure, parsed from the error envelope (or made up for network failures and bare proxies). */
export class OrielError extends Error {
  constructor({
    code,
    message,
    status = 0,
    details = {},
    requestId = null,
    recoverable = false,
    retryAfter = null,
    attempts = 1,
    ambiguous = false,
    cause,
  }) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "OrielError";
    this.code = code;
    this.status = status;
    this.details = details || {};
    this.fields = (details && details.fields) || {};
    this.requestId = requestId;
    this.recoverable = Boolean(recoverable);
    this.retryAfter = retryAfter;
    this.attempts = attempts;
    this.ambiguous = Boolean(ambiguous); // the request may have been processed: its outcome is unknown
  }
}

/** Seconds to wait from a Retry-After header value (delta-seconds or HTTP date), or null. */
export function parseRetryAfter(value, nowMs = Date.now()) {
  if (value === null || value === undefined || value === "") return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text);
  const when = Date.parse(text);
  return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - nowMs) / 1000));
}

/** A fresh idempotency key (UUID v4). */
export function newIdempotencyKey() {
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === "function") return globalThis.crypto.randomUUID();
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Whether an OrielError may succeed if the same call is sent again (`repeatable`: a repeat is harmless). */
export function isRetryable(error, { repeatable = true } = {}) {
  if (!(error instanceof OrielError) || error.code === "ABORTED") return false;
  if (error.ambiguous && !repeatable) return false; // it may have happened; a second one would be a duplicate
  if (error.code === "NETWORK_ERROR") return true;
  const statusSaysRetry = RETRYABLE_STATUSES.has(error.status) || (error.status === 409 && error.code === IN_PROGRESS);
  return statusSaysRetry && error.recoverable;
}

/** Whether sending `method path` twice does no harm: a read, or a write listed in `deduplicatedWrites`. */
export function isRepeatable(method, path, deduplicatedWrites = DEDUPLICATED_WRITES) {
  method = method.toUpperCase();
  if (!WRITE_METHODS.has(method)) return true;
  const call = `${method} ${String(path).split(/[?#]/, 1)[0]}`;
  return deduplicatedWrites.some((pattern) => (pattern instanceof RegExp ? pattern.test(call) : pattern === call));
}

/** The wait before attempt `attempt + 1`: at least the server's word, plus full jitter of the backoff step. */
export function backoffDelayMs(error, attempt, { baseDelayMs = 250, maxDelayMs = 8000, random = Math.random } = {}) {
  const step = Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1));
  const jitter = Math.floor(random() * step);
  // The server's Retry-After is a minimum; the jitter on top spreads a crowd told the same moment.
  if (error && error.retryAfter !== null && error.retryAfter !== undefined) return error.retryAfter * 1000 + jitter;
  return jitter;
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
  return text;
}

function errorFromResponse(response, body, attempts, nowMs) {
  const headerWait = parseRetryAfter(response.headers.get("Retry-After"), nowMs);
  const envelope = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : null;
  if (envelope) {
    const retryAfter = headerWait ?? (typeof envelope.retry_after === "number" ? envelope.retry_after : null);
    return new OrielError({
      code: envelope.code || `HTTP_${response.status}`,
      message: envelope.message || `HTTP ${response.status}`,
      status: response.status,
      details: envelope.details || {},
      requestId: envelope.request_id || response.headers.get("X-Request-ID"),
      recoverable: envelope.recoverable === true,
      retryAfter,
      attempts,
    });
  }
  // Not our envelope (a proxy or load balancer answered): judge by the status alone.
  return new OrielError({
    code: `HTTP_${response.status}`,
    message: `The server answered ${response.status} without an error body.`,
    status: response.status,
    requestId: response.headers.get("X-Request-ID"),
    recoverable: RETRYABLE_STATUSES.has(response.status),
    retryAfter: headerWait,
    attempts,
    ambiguous: AMBIGUOUS_BARE_STATUSES.has(response.status),
  });
}

/** The error of a write not sent again after an ambiguous failure: what happened, and why no retry. */
function notRepeated(error, method, path) {
  return new OrielError({
    ...error,
    message:
      `${error.message} The request may have been processed; it was not sent again because the server ` +
      `does not de-duplicate ${method} ${path}. Check before repeating it.`,
    details: error.details,
    ambiguous: true,
    cause: error,
  });
}

/** The caller's error when the server refused the refresh token (a 401): the session is over. */
function sessionEnded(refusal, attempts) {
  return new OrielError({
    code: "SESSION_ENDED",
    message: `The session has ended (the refresh token was refused: ${refusal.code}); sign in again.`,
    status: 401,
    details: { refresh_code: refusal.code },
    requestId: refusal.requestId,
    attempts,
    cause: refusal,
  });
}

/** The caller's error when the refresh failed otherwise (network, 503...): the tokens are kept. */
function refreshTrouble(failure, attempts) {
  return new OrielError({
    code: failure.code,
    message: `The access token expired and could not be refreshed: ${failure.message}`,
    status: failure.status,
    details: failure.details,
    requestId: failure.requestId,
    recoverable: failure.recoverable,
    retryAfter: failure.retryAfter,
    attempts,
    ambiguous: false, // the caller's own request was refused (401): it did not happen
    cause: failure,
  });
}

/** Build a client; see the module header for the options and methods. */
export function createClient(options = {}) {
  const settings = {
    baseUrl: "",
    refreshPath: "/api/auth/refresh",
    deduplicatedWrites: DEDUPLICATED_WRITES,
    maxAttempts: 4,
    deadlineMs: 30000,
    baseDelayMs: 250,
    maxDelayMs: 8000,
    timeoutMs: 30000,
    ...options,
  };
  const fetchImpl = options.fetch || globalThis.fetch.bind(globalThis);
  const sleep = options.sleep || ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  const now =
    options.now || (() => (globalThis.performance ? globalThis.performance.now() : Date.now()));
  const random = options.random || Math.random;
  let token = options.token || null;
  let refreshToken = options.refreshToken || null;
  let refreshing = null; // the refresh in flight, shared by every call that meets TOKEN_EXPIRED meanwhile

  async function attemptOnce(method, url, init, attempt, signal) {
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal.reason);
    if (signal) {
      if (signal.aborted) controller.abort(signal.reason);
      else signal.addEventListener("abort", onAbort, { once: true });
    }
    const timer = setTimeout(() => controller.abort(new Error("timeout")), settings.timeoutMs);
    try {
      const response = await fetchImpl(url, { ...init, method, signal: controller.signal });
      const body = await readBody(response);
      if (response.ok) return { response, body };
      throw errorFromResponse(response, body, attempt, Date.now());
    } catch (err) {
      if (err instanceof OrielError) throw err;
      if (signal && signal.aborted) {
        throw new OrielError({ code: "ABORTED", message: "The request was aborted.", attempts: attempt, cause: err });
      }
      throw new OrielError({
        code: "NETWORK_ERROR",
        message: "The server could not be reached.",
        recoverable: true,
        attempts: attempt,
        ambiguous: true, // sent or not, answered or not: nobody knows
        cause: err,
      });
    } finally {
      clearTimeout(timer);
      if (signal) signal.removeEventListener("abort", onAbort);
    }
  }

  function forgetTokens() {
    token = null;
    refreshToken = null;
  }

  function authLost(error) {
    if (!settings.onAuthLost) return;
    try {
      settings.onAuthLost({ error });
    } catch (hookError) {
      console.error("oriel-client: onAuthLost threw", hookError); // the caller still gets its error
    }
  }

  async function runRefresh(held) {
    let result;
    try {
      // Repeating a refresh only mints another access token, so its own network failures are retried.
      result = await request("POST", settings.refreshPath, {
        auth: false,
        headers: { Authorization: `Bearer ${held}` },
        repeatable: true,
      });
    } catch (error) {
      if (error instanceof OrielError && error.status === 401 && refreshToken === held) {
        forgetTokens(); // refused for good (expired, revoked, unknown user): nothing can renew it
        authLost(error);
      }
      throw error; // otherwise transient: the tokens stay, a later call refreshes again
    }
    const fresh = result.data && typeof result.data.access_token === "string" ? result.data.access_token : null;
    if (!fresh) {
      throw new OrielError({
        code: "REFRESH_FAILED",
        message: "The refresh answer held no access token.",
        status: result.status,
        requestId: result.requestId,
      });
    }
    if (refreshToken === held) token = fresh; // not after a sign-out or new tokens set meanwhile
    return fresh;
  }

  /** A new access token from the refresh token; concurrent callers share one request. */
  function refreshAccessToken() {
    if (!refreshToken) {
      const none = new OrielError({ code: "SESSION_ENDED", message: "No refresh token is held.", status: 401 });
      return Promise.reject(none);
    }
    if (!refreshing) {
      refreshing = runRefresh(refreshToken).finally(() => {
        refreshing = null;
      });
    }
    return refreshing;
  }

  async function request(method, path, opts = {}) {
    method = method.toUpperCase();
    const useAuth = opts.auth !== false;
    const headers = new Headers(opts.headers || {});
    headers.set("Accept", "application/json");
    let body = opts.body;
    if (opts.json !== undefined) {
      headers.set("Content-Type", "application/json");
      body = JSON.stringify(opts.json);
    }
    let idempotencyKey = null;
    if (WRITE_METHODS.has(method)) {
      idempotencyKey = opts.idempotencyKey || headers.get("Idempotency-Key") || newIdempotencyKey();
      headers.set("Idempotency-Key", idempotencyKey); // the same key on every attempt of this call
    }
    const repeatable =
      typeof opts.repeatable === "boolean" ? opts.repeatable : isRepeatable(method, path, settings.deduplicatedWrites);
    const url = settings.baseUrl + path;
    const started = now();
    let maxAttempts = opts.retry === false ? 1 : settings.maxAttempts;
    let refreshed = false;
    const ownAuthorization = headers.get("Authorization"); // the caller's, used when no token is held
    for (let attempt = 1; ; attempt++) {
      const sentToken = useAuth ? token : null;
      if (sentToken) headers.set("Authorization", `Bearer ${sentToken}`);
      else if (ownAuthorization) headers.set("Authorization", ownAuthorization);
      else headers.delete("Authorization"); // signed out between two attempts: send no stale token
      try {
        const { response, body: data } = await attemptOnce(method, url, { headers, body }, attempt, opts.signal);
        return {
          status: response.status,
          data,
          headers: response.headers,
          requestId: response.headers.get("X-Request-ID"),
          replayed: response.headers.get("Idempotent-Replayed") === "true",
          attempts: attempt,
          idempotencyKey,
        };
      } catch (error) {
        if (useAuth && !refreshed && sentToken && error.code === TOKEN_EXPIRED && error.status === 401) {
          // A 401 is decided before the view runs: sending it again with a new token is no duplicate.
          if (token === sentToken && refreshToken) {
            refreshed = true;
            try {
              await refreshAccessToken();
            } catch (failure) {
              if (!(failure instanceof OrielError)) throw failure;
              throw failure.status === 401 ? sessionEnded(failure, attempt) : refreshTrouble(failure, attempt);
            }
          } else if (token && token !== sentToken) {
            refreshed = true; // another call refreshed while this one was out: just use the new token
          } else {
            throw error;
          }
          maxAttempts += 1; // the resend does not use up a retry
          continue;
        }
        if (error.ambiguous && !repeatable) throw notRepeated(error, method, path);
        if (!isRetryable(error, { repeatable }) || attempt >= maxAttempts) throw error;
        const delayMs = backoffDelayMs(error, attempt, { ...settings, random });
        if (now() - started + delayMs > settings.deadlineMs) throw error;
        if (settings.onRetry) settings.onRetry({ attempt, delayMs, error });
        await sleep(delayMs);
      }
    }
  }

  return {
    request,
    get: (path, opts) => request("GET", path, opts),
    delete: (path, opts) => request("DELETE", path, opts),
    post: (path, json, opts = {}) => request("POST", path, { ...opts, json }),
    put: (path, json, opts = {}) => request("PUT", path, { ...opts, json }),
    patch: (path, json, opts = {}) => request("PATCH", path, { ...opts, json }),
    upload: (path, formData, opts = {}) => request("POST", path, { ...opts, body: formData }),
    /** Hold an access token and (optionally) its refresh token, in memory only. */
    setTokens({ access = null, refresh = null } = {}) {
      token = access || null;
      refreshToken = refresh || null;
    },
    /** Set the access token (the refresh token is kept); null forgets both, as a sign-out. */
    setToken(value) {
      if (value) token = value;
      else forgetTokens();
    },
    hasToken: () => token !== null,
    hasRefreshToken: () => refreshToken !== null,
    refreshAccessToken,
  };
}
