/**
 * oriel-client.js: the browser side of the Oriel Signal FX Pro error contract. A dependency-free ES module.
 *
 *   import { createClient, OrielError } from "/static/js/oriel-client.js";
 *   const api = createClient({ baseUrl: "" });          // same origin
 *   const { data } = await api.post("/api/auth/login", { email, password });
 *   api.setToken(data.access_token);                     // kept in memory only, sent as a Bearer header
 *   try {
 *     const { data: { render } } = await api.post("/api/renders", { upload_id: 7, preset: "waveform" });
 *   } catch (err) {
 *     if (err instanceof OrielError) show(err.message, err.fields, err.requestId);
 *   }
 *
 * createClient(options) → client. Options (all optional):
 *   baseUrl       prefix for every path ("" = same origin)
 *   token         initial access token (or call client.setToken later; never put it in a URL)
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
 * client.request(method, path, {json, body, headers, idempotencyKey, retry = true, signal})
 * client.get(path, opts), client.delete(path, opts), client.post(path, json, opts),
 * client.put(path, json, opts), client.patch(path, json, opts), client.upload(path, formData, opts)
 *   → Promise<{status, data, headers, requestId, replayed, attempts, idempotencyKey}>
 *   (`replayed`: the server answered from its idempotency store: `Idempotent-Replayed: true`).
 * client.setToken(token | null), client.hasToken()
 *
 * Writes (POST, PUT, PATCH, DELETE) carry an `Idempotency-Key` (crypto.randomUUID(), or opts.idempotencyKey),
 * created once per logical call and REUSED by every retry of it, so the server does the work once even
 * when a response is lost on the way back.
 *
 * Retries: only what can succeed on retry. A network failure or timeout, and 408, 429, 502, 503, 504 and
 * 409 IDEMPOTENCY_REQUEST_IN_PROGRESS are retried unless the envelope says `recoverable: false`; nothing
 * else is (422, 400, 401, 403, 404, 402, 500...). The wait is the server's `Retry-After` (seconds or an
 * HTTP date; else the envelope's `retry_after`) when it gives one, else full-jitter exponential backoff
 * (random(0, min(maxDelayMs, baseDelayMs * 2^n))). An aborted call (opts.signal) is never retried.
 *
 * Failures reject with OrielError: {code, message, status, fields, details, requestId, recoverable,
 * retryAfter (seconds or null), attempts, cause}. A network failure is code NETWORK_ERROR with status 0.
 */

const WRITE_METHODS = new Set(["POST", "PUT", "PATCH", "DELETE"]);
const RETRYABLE_STATUSES = new Set([408, 429, 502, 503, 504]);
const IN_PROGRESS = "IDEMPOTENCY_REQUEST_IN_PROGRESS";

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

/** Whether an OrielError may succeed if the same call is sent again. */
export function isRetryable(error) {
  if (!(error instanceof OrielError) || error.code === "ABORTED") return false;
  if (error.code === "NETWORK_ERROR") return true;
  const statusSaysRetry = RETRYABLE_STATUSES.has(error.status) || (error.status === 409 && error.code === IN_PROGRESS);
  return statusSaysRetry && error.recoverable;
}

/** The wait before attempt `attempt + 1`: the server's word when it gave one, else full jitter. */
export function backoffDelayMs(error, attempt, { baseDelayMs = 250, maxDelayMs = 8000, random = Math.random } = {}) {
  if (error && error.retryAfter !== null && error.retryAfter !== undefined) return error.retryAfter * 1000;
  const cap = Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1));
  return Math.floor(random() * cap);
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
  });
}

/** Build a client; see the module header for the options and methods. */
export function createClient(options = {}) {
  const settings = {
    baseUrl: "",
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
        cause: err,
      });
    } finally {
      clearTimeout(timer);
      if (signal) signal.removeEventListener("abort", onAbort);
    }
  }

  async function request(method, path, opts = {}) {
    method = method.toUpperCase();
    const headers = new Headers(opts.headers || {});
    headers.set("Accept", "application/json");
    if (token) headers.set("Authorization", `Bearer ${token}`);
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
    const url = settings.baseUrl + path;
    const started = now();
    const maxAttempts = opts.retry === false ? 1 : settings.maxAttempts;
    for (let attempt = 1; ; attempt++) {
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
        if (!isRetryable(error) || attempt >= maxAttempts) throw error;
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
    setToken(value) {
      token = value || null;
    },
    hasToken: () => token !== null,
  };
}
