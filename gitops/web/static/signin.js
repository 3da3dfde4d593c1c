// The status page's sign-in form: sends the API token as JSON to POST /api/session, which
// sets a session cookie (a random id, never the token); the token never enters a URL.
"use strict";
(() => {
  const form = document.getElementById("signin");
  if (!form) return;
  const error = document.getElementById("signin-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const token = form.elements.token.value;
    try {
      const response = await fetch("/api/session", {
        method: "POST",
        credentials: "same-origin",
        cache: "no-store",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token }),
      });
      if (response.ok) {
        form.elements.token.value = "";
        window.location.replace("/");
        return;
      }
      const answer = await response.json().catch(() => ({}));
      error.textContent = `sign-in refused: ${answer.error || "HTTP " + response.status}`;
    } catch (err) {
      error.textContent = `cannot reach the daemon: ${err.message}`;
    }
  });
})();
