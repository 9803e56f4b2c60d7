// The MCP authorization flow on the relay's /mcp, driven by the official
// SDK's OAuth client: discovery from the 401, dynamic client registration,
// the sign-in page completed here as a person would (the email, then the
// code from the relay's code file), PKCE, the token; a refresh once the access
// token is revoked, refresh tokens rotated, revocation, and the refusals
// (a code used twice, a wrong verifier, an unregistered redirect URI).
// Run by tests/e2e/mcp_test.cpp with: MCP_URL (https://127.0.0.1:PORT/mcp),
// MCP_RELAY, MCP_EMAIL (the daemon owner's), MCP_CODES (the relay's
// --otp-file), MCP_DAEMON, and NODE_EXTRA_CA_CERTS.
// Prints one JSON line of findings and exits 0 when every check held.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";
import { text } from "./lib.mjs";

const env = process.env;
const url = new URL(env.MCP_URL);
const relay = new URL(env.MCP_RELAY);
const redirectUrl = "http://127.0.0.1:9/callback";
const findings = {};

/// What a hosted platform keeps for its user: the client, the tokens, the verifier.
class Provider {
  get redirectUrl() { return redirectUrl; }
  get clientMetadata() {
    return { client_name: "hpc-daemon tests", redirect_uris: [redirectUrl], token_endpoint_auth_method: "none",
             grant_types: ["authorization_code", "refresh_token"], response_types: ["code"] };
  }
  clientInformation() { return this.client; }
  saveClientInformation(c) { this.client = c; }
  tokens() { return this.saved; }
  saveTokens(t) { this.saved = t; }
  redirectToAuthorization(u) { this.authUrl = u; }
  saveCodeVerifier(v) { this.verifier = v; }
  codeVerifier() { return this.verifier; }
}

const unescape = (s) => s.replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, "<")
  .replace(/&gt;/g, ">").replace(/&amp;/g, "&");
function hiddenFields(html) {
  const fields = {};
  for (const m of html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)">/g)) fields[m[1]] = unescape(m[2]);
  return fields;
}
const form = (path, fields) => fetch(new URL(path, relay), {
  method: "POST", redirect: "manual",
  headers: { "Content-Type": "application/x-www-form-urlencoded" }, body: new URLSearchParams(fields) });
const codeLines = () => readFileSync(env.MCP_CODES, "utf8").split("\n").filter((l) => l.startsWith(env.MCP_EMAIL + " "));
async function newCode(before) {
  for (let i = 0; i < 200; i++) {
    const lines = codeLines();
    if (lines.length > before) return lines[lines.length - 1].split(" ")[1];
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("no sign-in code came");
}

/// As a person at the browser: the page, the email, a wrong code, the code; the redirect back.
async function signIn(authUrl) {
  let res = await fetch(authUrl, { redirect: "manual" });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-security-policy"), /default-src 'none'/);
  const first = hiddenFields(await res.text());
  assert.equal(first.step, "email");
  const before = codeLines().length;
  res = await form("/oauth/authorize", { ...first, email: env.MCP_EMAIL });
  assert.equal(res.status, 200);
  const second = hiddenFields(await res.text());
  assert.equal(second.step, "code");
  const code = await newCode(before);
  res = await form("/oauth/authorize", { ...second, code: code === "000000" ? "000001" : "000000" });
  assert.equal(res.status, 401, "a wrong code is refused, and the page asks again");
  assert.equal(hiddenFields(await res.text()).signin, second.signin);
  res = await form("/oauth/authorize", { ...second, code, agent: "hosted" });
  assert.equal(res.status, 302);
  const back = new URL(res.headers.get("location"));
  assert.equal(back.origin + back.pathname, redirectUrl);
  assert.equal(back.searchParams.get("state"), new URL(authUrl).searchParams.get("state"));
  return back.searchParams.get("code");
}

const provider = new Provider();
let client = new Client({ name: "hpc-daemon-tests", version: "1.0.0" });
let transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
try {
  // Metadata, as the SDK finds it from the 401.
  const challenge = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  assert.equal(challenge.status, 401);
  assert.match(challenge.headers.get("www-authenticate"), /resource_metadata="https:\/\/[^"]+\/\.well-known\/oauth-protected-resource\/mcp"/);
  const server = await (await fetch(new URL("/.well-known/oauth-authorization-server", relay))).json();
  assert.deepEqual(server.code_challenge_methods_supported, ["S256"]);

  // No token: the SDK registers itself and sends the person to sign in.
  await assert.rejects(client.connect(transport), UnauthorizedError);
  assert.ok(provider.client?.client_id?.startsWith("mcp-"), "registered dynamically");
  assert.ok(provider.authUrl, "sent to the sign-in page");
  const code = await signIn(provider.authUrl);
  await transport.finishAuth(code);
  assert.ok(provider.saved?.access_token && provider.saved?.refresh_token);
  transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
  client = new Client({ name: "hpc-daemon-tests", version: "1.0.0" });
  await client.connect(transport);
  const listed = await client.callTool({ name: "list_daemons", arguments: {} });
  assert.ok(listed.structuredContent.daemons.some((d) => d.daemon_id === env.MCP_DAEMON), text(listed));
  const ran = await client.callTool({ name: "run_command", arguments: { daemon: env.MCP_DAEMON, command: "echo oauth" } });
  assert.equal(ran.structuredContent.stdout, "oauth\n", text(ran));
  findings.signin = "ok";

  // A code is spent once.
  const token = (fields) => form("/oauth/token", { client_id: provider.client.client_id, ...fields });
  let res = await token({ grant_type: "authorization_code", code, redirect_uri: redirectUrl, code_verifier: provider.verifier });
  assert.equal(res.status, 400);
  assert.equal((await res.json()).error, "invalid_grant");

  // The access token revoked: the SDK refreshes and goes on; the refresh token it used is spent.
  const first = provider.saved;
  assert.equal((await form("/oauth/revoke", { token: first.access_token })).status, 200);
  const after = await client.callTool({ name: "run_command", arguments: { daemon: env.MCP_DAEMON, command: "echo again" } });
  assert.equal(after.structuredContent?.stdout, "again\n", text(after));
  assert.notEqual(provider.saved.access_token, first.access_token, "a new access token");
  // The session acts with the new token, not the revoked one it was opened with.
  const relisted = await client.callTool({ name: "list_daemons", arguments: {} });
  assert.ok(relisted.structuredContent?.daemons?.some((d) => d.daemon_id === env.MCP_DAEMON), text(relisted));
  res = await token({ grant_type: "refresh_token", refresh_token: first.refresh_token });
  assert.equal(res.status, 400, "a refresh token is spent when used");
  findings.refreshed = "ok";

  // A refresh token revoked is refused.
  assert.equal((await form("/oauth/revoke", { token: provider.saved.refresh_token })).status, 200);
  res = await token({ grant_type: "refresh_token", refresh_token: provider.saved.refresh_token });
  assert.equal(res.status, 400);
  findings.revoked = "ok";

  // PKCE: a verifier that does not match spends the code for nothing.
  const verifier = randomBytes(32).toString("base64url");
  const authorize = new URL("/oauth/authorize", relay);
  for (const [k, v] of Object.entries({ response_type: "code", client_id: provider.client.client_id,
    redirect_uri: redirectUrl, state: "s1", code_challenge_method: "S256",
    code_challenge: createHash("sha256").update(verifier).digest("base64url") })) authorize.searchParams.set(k, v);
  const manual = await signIn(authorize.href);
  res = await token({ grant_type: "authorization_code", code: manual, redirect_uri: redirectUrl,
                      code_verifier: randomBytes(32).toString("base64url") });
  assert.equal(res.status, 400);
  res = await token({ grant_type: "authorization_code", code: manual, redirect_uri: redirectUrl, code_verifier: verifier });
  assert.equal(res.status, 400, "the code was spent by the failed attempt");
  // Errors before the client is known are shown, never sent to an unregistered redirect URI.
  authorize.searchParams.set("redirect_uri", "https://attacker.example.org/cb");
  res = await fetch(authorize, { redirect: "manual" });
  assert.equal(res.status, 400);
  assert.equal(res.headers.get("location"), null);
  res = await fetch(new URL("/oauth/register", relay), { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ redirect_uris: ["javascript:alert(1)"] }) });
  assert.equal(res.status, 400);
  findings.refusals = "ok";
  findings.ok = true;
} finally {
  await client.close().catch(() => {});
}
console.log(JSON.stringify(findings));
