// The official MCP TypeScript SDK drives `hpc-agent mcp` over stdio, through
// a real relay and daemon: tools, resources, prompts, progress, and the
// errors an agent acts on. Run by tests/e2e/mcp_test.cpp, which starts the
// relay and the daemon and passes them in the environment:
//   HPC_AGENT_BIN, HPC_AGENT_URL, HPC_AGENT_TOKEN, HPC_AGENT_CA,
//   MCP_DAEMON (its id), MCP_WORK (an allowed directory), MCP_OUTSIDE (not allowed).
// Prints one JSON line of findings and exits 0 when every check held.
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { McpError, ResourceUpdatedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { text, within } from "./lib.mjs";

const env = process.env;
const daemon = env.MCP_DAEMON;
const transport = new StdioClientTransport({
  command: env.HPC_AGENT_BIN,
  args: ["mcp"],
  env: {
    HPC_AGENT_URL: env.HPC_AGENT_URL,
    HPC_AGENT_TOKEN: env.HPC_AGENT_TOKEN,
    HPC_AGENT_CA: env.HPC_AGENT_CA,
    PATH: env.PATH,
  },
  stderr: "inherit",
});
const client = new Client({ name: "hpc-daemon-tests", version: "1.0.0" });
const findings = {};

async function call(name, args, options) {
  return client.callTool({ name, arguments: args }, undefined, options);
}


async function rpcError(promise) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof McpError, `expected a JSON-RPC error, got ${e}`);
    return e.code;
  }
  assert.fail("expected a JSON-RPC error");
}

try {
  await client.connect(transport);
  assert.equal(client.getServerVersion().name, "hpc-agent");
  assert.ok(client.getServerCapabilities().tools);

  const tools = (await client.listTools()).tools.map((t) => t.name).sort();
  assert.deepEqual(tools, [
    "cancel_job", "job_status", "list_daemons", "list_jobs", "read_file", "run_command",
    "shell_close", "shell_open", "shell_read", "shell_resize", "shell_send", "submit_job", "wait_job", "write_file",
  ]);
  findings.tools = tools.length;

  // list_daemons: the test's daemon, connected.
  const listed = await call("list_daemons", {});
  assert.equal(listed.isError, false);
  const mine = listed.structuredContent.daemons.find((d) => d.daemon_id === daemon);
  assert.ok(mine, `daemon ${daemon} in ${JSON.stringify(listed.structuredContent)}`);
  assert.equal(mine.connected, true);
  assert.equal(mine.skill_uri, `hpc://daemons/${daemon}/skill`);

  // run_command: exit status and both streams, kept apart.
  const ran = await call("run_command", { daemon, command: "echo hello; echo oops >&2; exit 3" });
  assert.equal(ran.isError, false);
  assert.equal(ran.structuredContent.exit_code, 3);
  assert.equal(ran.structuredContent.stdout, "hello\n");
  assert.equal(ran.structuredContent.stderr, "oops\n");
  assert.match(text(ran), /exit 3/);
  findings.run = "ok";

  // Its stdin; progress while it runs; a cancelled call stops the command.
  const piped = await call("run_command", { daemon, command: "tr a-z A-Z", stdin: "piped\n" });
  assert.equal(piped.structuredContent.stdout, "PIPED\n", text(piped));
  const ticks = [];
  const slow = await call(
    "run_command", { daemon, command: "for i in 1 2 3; do echo tick $i; sleep 1; done" },
    { onprogress: (p) => ticks.push(p), timeout: 60000 });
  assert.equal(slow.structuredContent.stdout, "tick 1\ntick 2\ntick 3\n", text(slow));
  assert.ok(ticks.length >= 1, "a progress notification while the command ran");
  assert.equal(ticks[0].total, 300);
  const controller = new AbortController();
  let started;
  const startedOnce = new Promise((resolve) => { started = resolve; });
  const doomed = call(
    "run_command",
    { daemon, cwd: env.MCP_WORK, command: "echo $$ > cancel.pid; echo started; exec sleep 600" },
    {
      signal: controller.signal, timeout: 120000,
      // Output has arrived: the pid file is written.
      onprogress: (p) => { if (/^[1-9]\d* bytes/.test(p.message ?? "")) started(); },
    });
  await startedOnce;
  controller.abort();
  await assert.rejects(doomed);
  let stopped = false;
  for (let i = 0; i < 100 && !stopped; i++) {
    const check = await call("run_command", {
      daemon, cwd: env.MCP_WORK,
      command: "test -s cancel.pid || exit 9; kill -0 $(cat cancel.pid) 2>/dev/null && { sleep 0.1; echo alive; } || echo gone",
    });
    assert.equal(check.structuredContent.exit_code, 0, text(check));
    stopped = check.structuredContent.stdout === "gone\n";
  }
  assert.ok(stopped, "the cancelled command's process was stopped");
  findings.run_progress = ticks.length;
  findings.run_cancel = "ok";

  // Errors an agent acts on: a tool result naming the cause.
  const outside = await call("run_command", { daemon, command: "pwd", cwd: env.MCP_OUTSIDE });
  assert.equal(outside.isError, true);
  assert.match(text(outside), /PATH_NOT_ALLOWED/);
  const offline = await call("run_command", { daemon: "no-such-daemon", command: "true" });
  assert.equal(offline.isError, true);
  assert.match(text(offline), /UNAVAILABLE|NOT_FOUND/);
  // ...and arguments that do not fit the schema, a JSON-RPC error.
  assert.equal(await rpcError(call("run_command", { daemon, command: 5 })), -32602);
  assert.equal(await rpcError(call("run_command", { daemon, command: "true", timeout: 3 })), -32602);
  assert.equal(await rpcError(call("no_such_tool", {})), -32602);
  findings.errors = "ok";

  // A job: submit, wait with progress, status, list.
  const submitted = await call("submit_job", { daemon, script: "#!/bin/sh\necho job-out\nexit 0\n", name: "mcp-test" });
  assert.equal(submitted.isError, false, text(submitted));
  const jobId = submitted.structuredContent.job_id;
  assert.ok(jobId);
  const waited = await call("wait_job", { daemon, job_id: jobId, timeout_s: 120 });
  assert.equal(waited.isError, false, text(waited));
  assert.equal(waited.structuredContent.ended, true);
  assert.equal(waited.structuredContent.exit_code, 0);
  assert.match(waited.structuredContent.stdout_tail, /job-out/);
  const status = await call("job_status", { daemon, job_id: jobId });
  assert.equal(status.structuredContent.job_id, jobId);
  const jobs = await call("list_jobs", { daemon });
  assert.ok(jobs.structuredContent.jobs.some((j) => j.job_id === jobId));
  findings.job = waited.structuredContent.state;

  // A job's resource, subscribed: its end is told once, then read.
  const updates = [];
  let told;
  const toldOnce = new Promise((resolve) => { told = resolve; });
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => { updates.push(n.params.uri); told(); });
  const watched = await call("submit_job", { daemon, script: "#!/bin/sh\nsleep 1\necho watched-out\n" });
  const watchedUri = `hpc://daemons/${daemon}/jobs/${watched.structuredContent.job_id}`;
  await client.subscribeResource({ uri: watchedUri });
  await within(toldOnce, 90000, "resources/updated");
  assert.deepEqual(updates, [watchedUri]);
  const jobResource = JSON.parse((await client.readResource({ uri: watchedUri })).contents[0].text);
  assert.equal(jobResource.state, "COMPLETED");
  assert.match(jobResource.stdout_tail, /watched-out/);
  await assert.rejects(client.subscribeResource({ uri: `hpc://daemons/${daemon}/skill` }));
  findings.subscribed = "ok";

  // A long job: wait_job reports progress while it runs, then the job is cancelled.
  const long = await call("submit_job", { daemon, script: "#!/bin/sh\nsleep 600\n" });
  const longId = long.structuredContent.job_id;
  const progress = [];
  const notYet = await call(
    "wait_job",
    { daemon, job_id: longId, timeout_s: 3 },
    { onprogress: (p) => progress.push(p), timeout: 60000 },
  );
  assert.equal(notYet.structuredContent.ended, false);
  assert.ok(progress.length >= 1, "a progress notification while waiting");
  assert.ok(progress[0].progress > 0 && progress[0].total === 3);
  const cancelled = await call("cancel_job", { daemon, job_id: longId });
  assert.equal(cancelled.isError, false, text(cancelled));
  const ended = await call("wait_job", { daemon, job_id: longId, timeout_s: 120 });
  assert.equal(ended.structuredContent.ended, true);
  assert.equal(ended.structuredContent.state, "CANCELLED");
  findings.progress = progress.length;

  // Files: a round trip of text and of bytes that are not UTF-8, byte ranges,
  // and writes only inside the allowed directories.
  const lines = Array.from({ length: 2000 }, (_, i) => `line ${i}`).join("\n") + "\n";
  const wrote = await call("write_file", { daemon, path: `${env.MCP_WORK}/notes.txt`, content: lines });
  assert.equal(wrote.isError, false, text(wrote));
  assert.equal(wrote.structuredContent.size, Buffer.byteLength(lines));
  const whole = await call("read_file", { daemon, path: `${env.MCP_WORK}/notes.txt` });
  assert.equal(whole.structuredContent.content, lines);
  assert.equal(whole.structuredContent.eof, true);
  const part = await call("read_file", { daemon, path: "notes.txt", offset: 7, length: 10 });
  assert.equal(part.structuredContent.content, lines.slice(7, 17));
  assert.equal(part.structuredContent.eof, false);
  const binary = Buffer.from([0, 255, 254, 10, 128, 1]);
  await call("write_file", { daemon, path: "bin.dat", content: binary.toString("base64"), encoding: "base64", mode: 0o600 });
  const back = await call("read_file", { daemon, path: "bin.dat" });
  assert.equal(back.structuredContent.encoding, "base64");
  assert.deepEqual(Buffer.from(back.structuredContent.content, "base64"), binary);
  const refused = await call("write_file", { daemon, path: `${env.MCP_OUTSIDE}/x.txt`, content: "no" });
  assert.equal(refused.isError, true);
  assert.match(text(refused), /PATH_NOT_ALLOWED/);
  const missing = await call("read_file", { daemon, path: `${env.MCP_WORK}/missing.txt` });
  assert.equal(missing.isError, true);
  assert.match(text(missing), /NOT_FOUND/);
  findings.files = "ok";

  // A persistent shell: state kept between calls, output as plain text.
  const opened = await call("shell_open", { daemon, cols: 100, rows: 30 });
  assert.equal(opened.isError, false, text(opened));
  const session = opened.structuredContent.session;
  const sent = await call("shell_send", {
    session, input: `cd '${env.MCP_WORK}' && X=$((6*7)) && echo "marker-$X"\n`, wait_for: "marker-42\\s", timeout_s: 30,
  });
  assert.equal(sent.structuredContent.matched, true, JSON.stringify(sent.structuredContent));
  assert.doesNotMatch(sent.structuredContent.output, /\x1b/, "no terminal escapes");
  const pwd = await call("shell_send", { session, input: "pwd; echo \"x=$X\"\n", wait_for: "x=42", timeout_s: 30 });
  assert.match(pwd.structuredContent.output, new RegExp(env.MCP_WORK.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
  assert.equal((await call("shell_resize", { session, cols: 132, rows: 50 })).isError, false);
  const size = await call("shell_send", { session, input: "stty size\n", wait_for: "50 132", timeout_s: 30 });
  assert.equal(size.structuredContent.matched, true, size.structuredContent.output);
  const later = await call("shell_send", { session, input: "sleep 0.3; echo later-done\n", settle_s: 0.05, timeout_s: 5 });
  const rest = await call("shell_read", { session, wait_for: "later-done\\s", timeout_s: 30 });
  assert.match(later.structuredContent.output + rest.structuredContent.output, /later-done/);
  assert.equal((await call("shell_close", { session })).isError, false);
  const gone = await call("shell_read", { session });
  assert.equal(gone.isError, true);
  assert.match(text(gone), /NOT_FOUND/);
  const quitting = (await call("shell_open", { daemon })).structuredContent.session;
  const exited = await call("shell_send", { session: quitting, input: "exit 7\n", timeout_s: 30, wait_for: "never-printed" });
  assert.equal(exited.structuredContent.exited, true);
  assert.equal(exited.structuredContent.exit_code, 7);
  await call("shell_close", { session: quitting });
  findings.shell = "ok";

  // The daemon's skill: as a resource and as a prompt.
  const resources = (await client.listResources()).resources;
  assert.ok(resources.some((r) => r.uri === `hpc://daemons/${daemon}/skill`));
  const skill = await client.readResource({ uri: `hpc://daemons/${daemon}/skill` });
  assert.ok(skill.contents[0].text.length > 0);
  assert.equal(await rpcError(client.readResource({ uri: "hpc://daemons/none/skill" })), -32002);
  const prompt = await client.getPrompt({ name: "use_cluster", arguments: { daemon } });
  assert.match(prompt.messages[0].content.text, new RegExp(daemon));
  findings.skill = skill.contents[0].text.length;

  await client.ping();
  await client.setLoggingLevel("warning");
  findings.ok = true;
  console.log(JSON.stringify(findings));
  await client.close();
} catch (e) {
  console.error(`mcp scenario failed: ${e.stack || e}`);
  console.log(JSON.stringify(findings));
  await client.close().catch(() => {});
  process.exit(1);
}
