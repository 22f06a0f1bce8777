import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { request, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";

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
