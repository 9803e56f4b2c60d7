// The relay's /mcp between two users: a session and the daemons of one are
// invisible to the other, Origin is checked against hpc-relay --mcp-origin
// (whose pages get CORS headers),
// and a revoked token is refused at once. Run by tests/e2e/mcp_test.cpp with:
//   MCP_URL (https://127.0.0.1:PORT/mcp), MCP_HTTP_TOKEN (the daemon owner's
//   token), MCP_OTHER_TOKEN (another user's), MCP_ALLOWED_ORIGIN, MCP_DAEMON,
//   MCP_RELAY (https://127.0.0.1:PORT), and NODE_EXTRA_CA_CERTS.
// Prints one JSON line of findings and exits 0 when every check held.
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { text } from "./lib.mjs";

const env = process.env;
const url = new URL(env.MCP_URL);
const daemon = env.MCP_DAEMON;
const owner = { Authorization: `Bearer ${env.MCP_HTTP_TOKEN}` };
const other = { Authorization: `Bearer ${env.MCP_OTHER_TOKEN}` };
const findings = {};

const message = (id, method, params = {}) => JSON.stringify({ jsonrpc: "2.0", id, method, params });
const initialize = message(1, "initialize", {
  protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "raw", version: "1" } });
async function post(headers, body = initialize) {
  return fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream", ...headers },
    body,
  });
}

async function connect(headers) {
  const client = new Client({ name: "hpc-daemon-tests", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(url, { requestInit: { headers } });
  await client.connect(transport);
  return { client, transport };
}

const theirs = await connect(other);
const mine = await connect(owner);
try {
  // One user's session id is nobody else's.
  const opened = await post(owner);
  assert.equal(opened.status, 200);
  const sid = opened.headers.get("mcp-session-id");
  await opened.json();
  assert.equal((await post({ ...other, "Mcp-Session-Id": sid }, message(2, "ping"))).status, 404);
  assert.equal((await fetch(url, { method: "DELETE", headers: { ...other, "Mcp-Session-Id": sid } })).status, 404);
  assert.equal((await post({ ...owner, "Mcp-Session-Id": sid }, message(3, "ping"))).status, 200);
  findings.sessions = "ok";

  // Nor are the daemons: the other user lists none and reaches none.
  const listed = await theirs.client.callTool({ name: "list_daemons", arguments: {} });
  assert.deepEqual(listed.structuredContent.daemons, [], text(listed));
  const ran = await theirs.client.callTool({ name: "run_command", arguments: { daemon, command: "echo no" } });
  assert.equal(ran.isError, true, text(ran));
  const own = await mine.client.callTool({ name: "run_command", arguments: { daemon, command: "echo yes" } });
  assert.equal(own.structuredContent.stdout, "yes\n", text(own));
  findings.daemons = "ok";

  // A page of an allowed origin may call, and read the answers (CORS); another may not.
  const preflight = await fetch(url, { method: "OPTIONS", headers: { Origin: env.MCP_ALLOWED_ORIGIN,
    "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type" } });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers.get("access-control-allow-origin"), env.MCP_ALLOWED_ORIGIN);
  assert.match(preflight.headers.get("access-control-allow-headers"), /Authorization/);
  const allowed = await post({ ...owner, Origin: env.MCP_ALLOWED_ORIGIN });
  assert.equal(allowed.status, 200);
  assert.equal(allowed.headers.get("access-control-allow-origin"), env.MCP_ALLOWED_ORIGIN);
  assert.match(allowed.headers.get("access-control-expose-headers"), /Mcp-Session-Id/);
  await allowed.text();
  assert.equal((await post({ ...owner, Origin: "https://elsewhere.example.org" })).status, 403);
  const withoutOrigin = await post(owner);
  assert.equal(withoutOrigin.headers.get("access-control-allow-origin"), null);
  await withoutOrigin.text();
  findings.origin = "ok";

  // A revoked token's next request is refused, on a session it opened.
  const revoked = await fetch(new URL("/auth/revoke", env.MCP_RELAY), {
    method: "POST", headers: { ...other, "Content-Type": "application/json" }, body: "{}" });
  assert.equal(revoked.status, 200, await revoked.text());
  const after = await post({ ...other, "Mcp-Session-Id": theirs.transport.sessionId }, message(4, "ping"));
  assert.equal(after.status, 401);
  findings.revoked = "ok";
  findings.ok = true;
} finally {
  await mine.client.close().catch(() => {});
  await theirs.client.close().catch(() => {});
}
console.log(JSON.stringify(findings));
