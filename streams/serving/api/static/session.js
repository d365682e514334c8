// The sign-in both pages share (the guide page, app.js, and the operator page, operator.js):
// the token and the JSON API calls made with it.
//
// The token lives in sessionStorage (this tab only: one sign-in serves both pages) and travels
// only in the Authorization header, never in a URL. A 401 signs the page out with a message.
"use strict";

const TOKEN_KEY = "tagstream.token";

const session = {
  token: null,
  signOut: () => {},  // the page's own sign-out, set by wireSignIn
  remember(token) { this.token = token; sessionStorage.setItem(TOKEN_KEY, token); },
  forget() { this.token = null; sessionStorage.removeItem(TOKEN_KEY); },
};

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// GET `path`, or POST `body` as JSON; the parsed answer, or an ApiError.
async function api(path, body) {
  const headers = { Authorization: `Bearer ${session.token}`, Accept: "application/json" };
  const init = { headers, cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401) {
    session.signOut("令牌无效或已失效，请重新登录。");
    throw new ApiError(401, "unauthorized");
  }
  if (!res.ok) {
    const answer = await res.json().catch(() => ({}));
    throw new ApiError(res.status, answer.message || `HTTP ${res.status}`);
  }
  return res.json();
}

// The page's sign-in form (#sign-in-form, #token, #sign-in-button) calls `signIn(token)`, which
// sets session.token, checks it and calls session.remember; a token this tab saved signs in
// again at once.
function wireSignIn(signIn, signOut) {
  session.signOut = signOut;
  const button = document.getElementById("sign-in-button");
  document.getElementById("sign-in-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = document.getElementById("token").value.trim();
    if (!token) return;
    button.disabled = true;
    try {
      await signIn(token);
    } catch (err) {
      if (err.status !== 401) signOut(`登录失败：${err.message}`);
    } finally {
      button.disabled = false;
    }
  });
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved).catch(() => {});
}
