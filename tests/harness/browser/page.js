// Test page for tests/system/test_browser_client.py: the REAL client module from the app, a fetch that records
// each attempt (time, method, Idempotency-Key, outcome), and helpers that put results in the page.
import { createClient, OrielError } from "/static/js/oriel-client.js";

const attempts = [];

function tracedFetch(url, init) {
  const entry = {
    url: String(url),
    method: init.method,
    key: new Headers(init.headers).get("Idempotency-Key"),
    hasAuthorization: new Headers(init.headers).has("Authorization"),
    at: performance.now(),
  };
  attempts.push(entry);
  return fetch(url, init).then(
    (response) => {
      entry.status = response.status;
      entry.retryAfter = response.headers.get("Retry-After");
      entry.doneAt = performance.now();
      return response;
    },
    (error) => {
      entry.error = String(error);
      entry.doneAt = performance.now();
      throw error;
    },
  );
}

const authLost = []; // each onAuthLost the client called: the refusal's code

const api = createClient({
  fetch: tracedFetch,
  maxAttempts: 4,
  deadlineMs: 20000,
  onAuthLost: ({ error }) => authLost.push(error.code),
});

function show(text) {
  document.getElementById("status").textContent = text;
  document.getElementById("attempts").textContent = JSON.stringify(attempts, null, 1);
}

function showError(error) {
  document.getElementById("error-message").textContent = `${error.code}: ${error.message}`;
  const list = document.getElementById("fields");
  list.replaceChildren();
  for (const [field, message] of Object.entries(error.fields)) {
    const item = document.createElement("li");
    item.dataset.field = field;
    item.textContent = `${field}: ${message}`;
    list.append(item);
  }
}

/** Run one call and report what the page saw (the result or the OrielError), plus every attempt. */
async function run(call) {
  attempts.length = 0;
  try {
    const result = await call(api);
    show(`ok ${result.status}`);
    const { status, data, requestId, replayed, attempts: n, idempotencyKey } = result;
    return { ok: true, status, data, requestId, replayed, attempts: n, idempotencyKey, trace: [...attempts] };
  } catch (error) {
    if (!(error instanceof OrielError)) throw error;
    showError(error);
    show(`error ${error.status}`);
    const { code, message, status, fields, requestId, recoverable, retryAfter, ambiguous } = error;
    const cause = error.cause instanceof OrielError ? error.cause.code : null;
    const report = { code, message, status, fields, requestId, recoverable, retryAfter, ambiguous, cause };
    return { ok: false, error: { ...report, attempts: error.attempts }, trace: [...attempts] };
  }
}

window.oriel = { api, run, attempts, authLost };
window.orielReady = true;
document.getElementById("status").textContent = "ready";
