// The official MCP TypeScript SDK drives `hpc-agent mcp --listen` over the
// streamable HTTP transport, through a real relay and daemon: the session,
// tools with progress over an event stream, a cancelled command, the bearer
// token, Host and Origin checks, and the end of a session. Run by
// tests/e2e/mcp_test.cpp, which starts the server and passes in the environment:
//   MCP_URL (http://127.0.0.1:PORT/mcp), MCP_HTTP_TOKEN, MCP_DAEMON, MCP_WORK.
// Prints one JSON line of findings and exits 0 when every check held.
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ResourceUpdatedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { text, within } from "./lib.mjs";

const env = process.env;
const url = new URL(env.MCP_URL);
const daemon = env.MCP_DAEMON;
const auth = { Authorization: `Bearer ${env.MCP_HTTP_TOKEN}` };
const findings = {};


const initialize = JSON.stringify({
  jsonrpc: "2.0", id: 1, method: "initialize",
  params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "raw", version: "1" } },
});
async function post(headers, body = initialize) {
  return fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream", ...headers },
    body,
  });
}

const transport = new StreamableHTTPClientTransport(url, { requestInit: { headers: auth } });
const client = new Client({ name: "hpc-daemon-tests", version: "1.0.0" });
try {
  // Refused before any session exists: no token, a wrong one, a foreign Host or Origin.
  assert.equal((await post({})).status, 401);
  assert.equal((await post({ Authorization: "Bearer wrong-token-of-some-length" })).status, 401);
  assert.equal((await post({ ...auth, Origin: "http://evil.example.com" })).status, 403);
  assert.equal((await post({ ...auth, "Content-Type": "text/plain" })).status, 415);
  const junk = await post(auth, "{not json");
  assert.equal(junk.status, 400);
  assert.equal((await junk.json()).error.code, -32700);
  assert.equal((await post({ ...auth, "Mcp-Session-Id": "no-such-session" }, JSON.stringify({
    jsonrpc: "2.0", id: 2, method: "tools/list" }))).status, 404);
  assert.equal((await post(auth, JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }))).status, 400);
  findings.refused = "ok";

  await client.connect(transport);
  assert.ok(transport.sessionId, "the server named a session");
  const tools = (await client.listTools()).tools.map((t) => t.name);
  assert.equal(tools.length, 14);
  const listed = await client.callTool({ name: "list_daemons", arguments: {} });
  assert.ok(listed.structuredContent.daemons.some((d) => d.daemon_id === daemon && d.connected));

  // Progress comes on the call's event stream, before its result.
  const ticks = [];
  const slow = await client.callTool(
    { name: "run_command", arguments: { daemon, command: "for i in 1 2 3; do echo tick $i; sleep 1; done" } },
    undefined, { onprogress: (p) => ticks.push(p), timeout: 60000 });
  assert.equal(slow.structuredContent.stdout, "tick 1\ntick 2\ntick 3\n", text(slow));
  assert.ok(ticks.length >= 1, "progress over the event stream");
  findings.progress = ticks.length;

  // A cancelled call stops its command.
  const controller = new AbortController();
  let started;
  const startedOnce = new Promise((resolve) => { started = resolve; });
  const doomed = client.callTool(
    { name: "run_command",
      arguments: { daemon, cwd: env.MCP_WORK, command: "echo $$ > http-cancel.pid; echo started; exec sleep 600" } },
    undefined,
    { signal: controller.signal, timeout: 120000,
      onprogress: (p) => { if (/^[1-9]\d* bytes/.test(p.message ?? "")) started(); } });
  await startedOnce;
  controller.abort();
  await assert.rejects(doomed);
  let stopped = false;
  for (let i = 0; i < 100 && !stopped; i++) {
    const check = await client.callTool({ name: "run_command", arguments: {
      daemon, cwd: env.MCP_WORK,
      command: "test -s http-cancel.pid || exit 9; kill -0 $(cat http-cancel.pid) 2>/dev/null && { sleep 0.1; echo alive; } || echo gone",
    } });
    assert.equal(check.structuredContent.exit_code, 0, text(check));
    stopped = check.structuredContent.stdout === "gone\n";
  }
  assert.ok(stopped, "the cancelled command's process was stopped");
  findings.cancel = "ok";

  // A subscribed job's end comes on the session's GET stream.
  let told;
  const toldOnce = new Promise((resolve) => { told = resolve; });
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => told(n.params.uri));
  const job = await client.callTool({ name: "submit_job", arguments: { daemon, script: "#!/bin/sh\nsleep 1\n" } });
  const jobUri = `hpc://daemons/${daemon}/jobs/${job.structuredContent.job_id}`;
  await client.subscribeResource({ uri: jobUri });
  const updated = await within(toldOnce, 90000, "resources/updated");
  assert.equal(updated, jobUri);
  findings.subscribed = "ok";

  // The GET stream numbers its events; one that reconnects with Last-Event-ID gets what
  // came after that one again. A raw session, to see the ids.
  const opened = await post(auth);
  const raw = opened.headers.get("mcp-session-id");
  await opened.json();
  const rawPost = (body) => post({ ...auth, "Mcp-Session-Id": raw }, JSON.stringify(body));
  assert.equal((await rawPost({ jsonrpc: "2.0", method: "notifications/initialized" })).status, 202);
  const uris = [];
  for (const i of [1, 2]) {
    const submittedRaw = await (await rawPost({ jsonrpc: "2.0", id: 10 + i, method: "tools/call",
      params: { name: "submit_job", arguments: { daemon, script: "#!/bin/sh\nexit 0\n" } } })).json();
    const uri = `hpc://daemons/${daemon}/jobs/${submittedRaw.result.structuredContent.job_id}`;
    uris.push(uri);
    const subscribed = await rawPost({ jsonrpc: "2.0", id: 20 + i, method: "resources/subscribe", params: { uri } });
    assert.equal(subscribed.status, 200);
    await subscribed.json();
  }
  async function readEvents(headers, count) {
    let res;
    // The previous GET stream ends once the server sees its client gone: 409 until then.
    for (let i = 0; i < 100; i++) {
      res = await fetch(url, { headers: { ...auth, Accept: "text/event-stream", "Mcp-Session-Id": raw, ...headers } });
      if (res.status !== 409) break;
      await res.body?.cancel();
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(res.status, 200);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    const deadline = Date.now() + 90000;
    let buffer = "";
    const events = [];
    while (events.length < count && Date.now() < deadline) {
      let timeout;
      const timer = new Promise((r) => { timeout = setTimeout(() => r({ done: true }), deadline - Date.now()); });
      const { value, done } = await Promise.race([reader.read(), timer]);
      clearTimeout(timeout);
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      for (let end; (end = buffer.indexOf("\n\n")) >= 0; buffer = buffer.slice(end + 2)) {
        const block = buffer.slice(0, end);
        events.push({ id: Number(/^id: (\d+)$/m.exec(block)[1]),
                      uri: JSON.parse(/^data: (.*)$/m.exec(block)[1]).params.uri });
      }
    }
    await reader.cancel();
    return events;
  }
  const first = await readEvents({}, 2);
  assert.deepEqual(first.map((e) => e.uri).sort(), [...uris].sort());
  assert.ok(first[0].id < first[1].id);
  const again = await readEvents({ "Last-Event-ID": String(first[0].id) }, 1);
  assert.deepEqual(again, [first[1]]);
  const bad = await fetch(url, { headers: { ...auth, Accept: "text/event-stream", "Mcp-Session-Id": raw,
                                            "Last-Event-ID": "x" } });
  assert.ok(bad.status === 400 || bad.status === 409, `Last-Event-ID x: ${bad.status}`);
  assert.equal((await fetch(url, { method: "DELETE", headers: { ...auth, "Mcp-Session-Id": raw } })).status, 200);
  findings.resumed = "ok";

  // Several calls at once on one session, each on its own request.
  const many = await Promise.all([1, 2, 3, 4, 5].map((i) =>
    client.callTool({ name: "run_command", arguments: { daemon, command: `echo n${i}` } })));
  assert.deepEqual(many.map((r) => r.structuredContent.stdout), ["n1\n", "n2\n", "n3\n", "n4\n", "n5\n"]);
  findings.concurrent = many.length;

  // The end of the session: its id is refused afterwards.
  const sessionId = transport.sessionId;
  await transport.terminateSession();
  const after = await post({ ...auth, "Mcp-Session-Id": sessionId }, JSON.stringify({ jsonrpc: "2.0", id: 9, method: "ping" }));
  assert.equal(after.status, 404);
  findings.ended = "ok";

  // At most 16 sessions: a 17th makes room by ending the least recently used idle one.
  const ids = [];
  for (let i = 0; i < 17; i++) {
    const res = await post(auth);
    assert.equal(res.status, 200);
    await res.json();
    ids.push(res.headers.get("mcp-session-id"));
  }
  const ping = (sid) => post({ ...auth, "Mcp-Session-Id": sid }, JSON.stringify({ jsonrpc: "2.0", id: 1, method: "ping" }));
  assert.equal((await ping(ids[0])).status, 404, "the oldest idle session was ended");
  for (const sid of ids.slice(1)) assert.equal((await ping(sid)).status, 200);
  findings.evicted = "ok";
  findings.ok = true;
} finally {
  await client.close().catch(() => {});
}
console.log(JSON.stringify(findings));
