// The console's calls to the admin API. The token lives in sessionStorage: it is gone when
// the tab closes, and never touches a cookie, so no other site can make the browser use it.

const TOKEN_KEY = "mailhook.token";
const ACCOUNT_KEY = "mailhook.account";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.details = (body && Array.isArray(body.details)) ? body.details : [];
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

export function account() {
  return sessionStorage.getItem(ACCOUNT_KEY) || "default";
}

export function setAccount(value) {
  sessionStorage.setItem(ACCOUNT_KEY, value);
}

/// One JSON call with the admin token. Resolves to the parsed body; rejects with ApiError
/// (status, message, field details) on any non-2xx answer.
export async function call(method, path, body, tokenOverride) {
  const headers = { authorization: `Bearer ${tokenOverride || token() || ""}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { error: `cannot reach the gateway: ${err.message}` });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text.slice(0, 200) };
    }
  }
  if (!response.ok) {
    throw new ApiError(response.status, data);
  }
  return data;
}

const enc = encodeURIComponent;

export const api = {
  settings: (acct) => call("GET", `/v1/accounts/${enc(acct)}/webhook`),
  saveSettings: (acct, settings) => call("PUT", `/v1/accounts/${enc(acct)}/webhook`, settings),
  rotateSecret: (acct) => call("POST", `/v1/accounts/${enc(acct)}/webhook/secret/rotate`),
  testPush: (acct, type) => call("POST", `/v1/accounts/${enc(acct)}/webhook/test`, { type }),
  message: (acct, msgId) => call("GET", `/v1/messages/${enc(msgId)}?account=${enc(acct)}`),
  failures: (acct) => call("GET", `/v1/accounts/${enc(acct)}/failures?limit=200`),
  replay: (acct, eventIds) =>
    call("POST", `/v1/accounts/${enc(acct)}/failures/replay`, eventIds ? { event_ids: eventIds } : {}),
  stats: (acct) => call("GET", `/v1/stats?account=${enc(acct)}`),
};
