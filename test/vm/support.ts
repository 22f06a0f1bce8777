import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { request, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MicrovmsClient } from "../../src/client/client.js";
import { projectRoot } from "../../src/paths.js";
import { BUILD_ROLE, BUSYBOX, eventually, type TestServer } from "../support/server.js";

/**
 * A MicroVM application for the BusyBox base: `bootstrap` runs BusyBox httpd on
 * 8080, whose CGI scripts answer with what the tests look at inside the guest.
 */
export function writeTestApp(scripts: Record<string, string> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), "microvms-app-"));
  const cgi = join(dir, "www", "cgi-bin");
  mkdirSync(cgi, { recursive: true });
  writeFileSync(join(dir, "bootstrap"), "#!/bin/sh\necho \"bootstrap starting as $(id -u)\"\nexec httpd -f -p 8080 -h /var/task/www\n", { mode: 0o755 });
  const cgiScripts: Record<string, string> = {
    // Everything the guest knows that the tests check: environment, user, memory.
    greet: 'echo "$GREETING"',
    uid: "id -u",
    memory: "grep MemTotal /proc/meminfo",
    // Whether the guest reaches a host port (10.0.2.2 is the host under QEMU user networking).
    // (nc, not wget: Debian's static BusyBox wget crashes resolving even an address.)
    reach: `if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 10.0.2.2 "$QUERY_STRING" | grep -q host-answer; then echo reachable; else echo unreachable; fi`,
    stream: 'for i in 1 2 3; do echo "part $i"; sleep 1; done',
    log: 'echo "to stderr: $QUERY_STRING" >&2; echo logged',
    ...scripts,
  };
  for (const [name, body] of Object.entries(cgiScripts)) {
    writeFileSync(join(cgi, name), `#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n${body}\n`);
    chmodSync(join(cgi, name), 0o755);
  }
  return dir;
}

export interface ProxyAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/**
 * A request to a MicroVM endpoint: to the proxy's address, with the endpoint's
 * host name; plain HTTP, or HTTPS verified against `ca` when given.
 */
export function callEndpoint(
  endpoint: string,
  proxyUrl: string,
  path: string,
  headers: Record<string, string> = {},
  ca?: string,
): Promise<ProxyAnswer> {
  const proxy = new URL(proxyUrl);
  const host = new URL(endpoint).hostname;
  const options = { host: proxy.hostname, port: proxy.port, path, headers: { host: `${host}:${proxy.port}`, ...headers } };
  return new Promise((resolve, reject) => {
    const respond = (res: IncomingMessage) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    };
    const req = ca ? httpsRequest({ ...options, ca, servername: host }, respond) : request(options, respond);
    req.on("error", reject);
    req.end();
  });
}

/** Pids of QEMU processes whose command line mentions `needle` (a MicroVM id or a data directory). */
export function qemuProcesses(needle: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8");
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      if (cmdline.startsWith("qemu-system") && cmdline.includes(needle) && !/\) Z /.test(stat)) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/**
 * An application with an expensive initialisation and a hooks listener, for
 * snapshot builds: `bootstrap` initialises once (the build's cold boot), then
 * serves HTTP on 8080 and hooks on 9000 (BusyBox nc running hook.sh per
 * request). Hook behaviour comes from the image's environment (HOOK_READY=fail,
 * HOOK_VALIDATE=slow...) or, for `run`, from the payload ("fail", "slow").
 * Runs as root (additionalOsCapabilities ["ALL"]) so it can write to its disk.
 */
export function writeSnapshotApp(): string {
  const dir = writeTestApp({
    initialized: "cat /tmp/initialized-at",
    hooks: "cat /tmp/hooks-called",
    payload: "cat /tmp/run-payload",
    // A counter in guest memory (/tmp is tmpfs).
    count: "n=$(( $(cat /tmp/count 2>/dev/null || echo 0) + 1 )); echo $n > /tmp/count; echo $n",
    mark: "mkdir -p /srv && echo \"$QUERY_STRING\" > /srv/mark && echo marked",
    "read-mark": "cat /srv/mark 2>/dev/null || echo none",
  });
  writeFileSync(
    join(dir, "bootstrap"),
    [
      "#!/bin/sh",
      "# The expensive initialisation, done once, at build time.",
      "sleep 1",
      "head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /tmp/initialized-at",
      'echo "initialized at $(cat /tmp/initialized-at)"',
      "nc -ll -p 9000 -e /var/task/hook.sh &",
      "exec httpd -f -p 8080 -h /var/task/www",
      "",
    ].join("\n"),
    { mode: 0o755 },
  );
  writeFileSync(
    join(dir, "hook.sh"),
    [
      "#!/bin/sh",
      "# One hook request on stdin/stdout: POST /<hook>.",
      "read -r method path rest",
      "len=0",
      "while IFS= read -r line; do",
      "  line=$(printf '%s' \"$line\" | tr -d '\\r')",
      '  [ -z "$line" ] && break',
      '  case "$line" in [Cc]ontent-[Ll]ength:*) len=$(echo "${line#*:}" | tr -d " ") ;; esac',
      "done",
      'body=$(head -c "$len")',
      "hook=${path#/}",
      'echo "hook $hook called" >&2',
      'echo "$hook" >> /tmp/hooks-called',
      'case "$hook" in',
      '  ready) mode=${HOOK_READY:-ok} ;;',
      '  validate) mode=${HOOK_VALIDATE:-ok} ;;',
      '  run) printf "%s" "$body" > /tmp/run-payload; mode=$body ;;',
      "  *) mode=ok ;;",
      "esac",
      'case "$mode" in',
      '  *fail*) status="500 Internal Server Error"; text="$hook refused" ;;',
      '  *slow*) sleep 30; status="200 OK"; text=late ;;',
      '  *) status="200 OK"; text=ok ;;',
      "esac",
      "printf 'HTTP/1.0 %s\\r\\nContent-Length: %s\\r\\nConnection: close\\r\\n\\r\\n%s' \"$status\" \"${#text}\" \"$text\"",
      "",
    ].join("\n"),
    { mode: 0o755 },
  );
  return dir;
}

export type Obj = Record<string, any>;

/** How long a build (a cold boot under TCG, more when several share the cores) and a run may take. */
const BUILD_TIMEOUT_MS = 180_000;
const RUN_TIMEOUT_MS = 120_000;

/** What the VM suites do through the API of one test server. */
export class Guests {
  constructor(
    private readonly client: MicrovmsClient,
    private readonly proxyUrl: string,
  ) {}

  static of(t: TestServer): Guests {
    return new Guests(t.client, t.server.proxyUrl);
  }

  /** Creates an image on the busybox base and waits for its version 1 to build or fail. */
  async createImage(name: string, uri: string, extra: Obj = {}): Promise<Obj> {
    await this.client.call("CreateMicrovmImage", { name, baseImageArn: BUSYBOX, buildRoleArn: BUILD_ROLE, codeArtifact: { uri }, ...extra });
    return eventually(
      async () => {
        const v: Obj = await this.client.call("GetMicrovmImageVersion", { imageIdentifier: name, imageVersion: "1" });
        return v.state === "SUCCESSFUL" || v.state === "FAILED" ? v : undefined;
      },
      `image ${name} to build`,
      BUILD_TIMEOUT_MS,
    );
  }

  /** Runs a MicroVM (PENDING at first) and waits for one of `states`. */
  async run(input: { imageIdentifier: string } & Obj, states: string[]): Promise<Obj> {
    const started = await this.client.call("RunMicrovm", input);
    assert.equal(started.state, "PENDING");
    return this.untilState(started.microvmId as string, states);
  }

  untilState(microvmId: string, states: string[]): Promise<Obj> {
    return eventually(
      async () => {
        const m: Obj = await this.client.call("GetMicrovm", { microvmIdentifier: microvmId });
        return states.includes(m.state as string) ? m : undefined;
      },
      `MicroVM ${microvmId} to reach ${states.join(" or ")}`,
      RUN_TIMEOUT_MS,
    );
  }

  async token(microvmId: string, allowedPorts: Obj[] = [{ port: 8080 }]): Promise<string> {
    const answer = await this.client.call("CreateMicrovmAuthToken", { microvmIdentifier: microvmId, allowedPorts, expirationInMinutes: 10 });
    return (answer.authToken as Record<string, string>)["X-aws-proxy-auth"]!;
  }

  /** GET through the MicroVM's endpoint with a fresh token; asserts a 200 and returns the trimmed body. */
  async get(vm: Obj, path: string): Promise<string> {
    const answer = await callEndpoint(vm.endpoint, this.proxyUrl, path, { "X-aws-proxy-auth": await this.token(vm.microvmId) });
    assert.equal(answer.status, 200, `${path}: ${answer.body}`);
    return answer.body.trim();
  }
}

/** `microvms serve` as its own process (so it can be killed with SIGKILL), on free ports. */
export async function spawnServe(dataDir: string, cacheDir: string): Promise<{ apiUrl: string; proxyUrl: string; kill(): void; exited: Promise<unknown> }> {
  const child = spawn(
    process.execPath,
    [join(projectRoot, "dist", "src", "cli", "main.js"), "serve", "--data-dir", dataDir, "--api-port", "0", "--proxy-port", "0", "--cache-dir", cacheDir],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const serving = await new Promise<{ apiUrl: string; proxyUrl: string }>((resolve, reject) => {
    let buffer = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      buffer += chunk;
      for (const line of buffer.split("\n")) {
        if (line.includes('"msg":"microvms serving"')) resolve(JSON.parse(line) as { apiUrl: string; proxyUrl: string });
      }
      buffer = buffer.slice(buffer.lastIndexOf("\n") + 1);
    });
    void exited.then(() => reject(new Error("microvms serve exited before serving")));
  });
  return { ...serving, kill: () => child.kill("SIGKILL"), exited };
}
