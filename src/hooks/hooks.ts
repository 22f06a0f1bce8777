import { request } from "node:http";
import type { Hooks } from "../api/generated/types.js";
import { Failure } from "../domain/failure.js";
import type { Vm } from "../drivers/driver.js";

/**
 * Lifecycle hooks: `POST http://<guest>:<hooks.port>/<name>`, 2xx is success,
 * each bounded by its `*TimeoutInSeconds` (DESIGN.md). The host reaches the
 * hooks port through the VM's loopback forward, like the endpoint proxy does.
 *
 *   build:     cold boot ─► app listens ─► /ready ─► /validate ─► snapshot
 *   MicroVM:   restore ─► /run (body: runHookPayload) ─► RUNNING
 *              /suspend before a suspension, /resume after one, /terminate before stopping
 */
export type HookName = "ready" | "validate" | "run" | "suspend" | "resume" | "terminate";

/** Defaults when a hook is ENABLED without a timeout: build hooks may initialise at length, MicroVM hooks not. */
const DEFAULT_TIMEOUT_SECONDS: Record<HookName, number> = { ready: 300, validate: 300, run: 30, suspend: 30, resume: 30, terminate: 30 };

/** The port the hooks listener runs on, and the application's readiness port when `ready` is disabled. */
export function hooksPort(hooks: Hooks | undefined): number {
  return hooks?.port ?? 8080;
}

/** The hook's timeout in milliseconds when it is ENABLED; undefined when it is not (hooks are off unless enabled). */
export function enabledHook(hooks: Hooks | undefined, name: HookName): number | undefined {
  const settings: Record<string, unknown> | undefined =
    name === "ready" || name === "validate" ? { ...hooks?.microvmImageHooks } : { ...hooks?.microvmHooks };
  if (settings?.[name] !== "ENABLED") return undefined;
  const seconds = settings[`${name}TimeoutInSeconds`];
  return (typeof seconds === "number" ? seconds : DEFAULT_TIMEOUT_SECONDS[name]) * 1000;
}

/** Calls the hook if it is enabled. */
export async function callHook(vm: Vm, hooks: Hooks | undefined, name: HookName, body = ""): Promise<void> {
  const timeoutMs = enabledHook(hooks, name);
  if (timeoutMs === undefined) return;
  const port = hooksPort(hooks);
  const what = `The ${name} hook (POST /${name} on port ${port})`;
  const hostPort = await vm.forward(port);
  await new Promise<void>((resolve, reject) => {
    const fail = (why: string) => reject(new Failure(`${what} ${why}.`));
    const req = request(
      {
        host: "127.0.0.1",
        port: hostPort,
        method: "POST",
        path: `/${name}`,
        agent: false,
        headers: { "content-type": "application/octet-stream", "content-length": Buffer.byteLength(body) },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          if (text.length < 200) text += chunk;
        });
        res.on("end", () => {
          clearTimeout(timer);
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) resolve();
          else fail(`answered HTTP ${status}${text.trim() ? `: ${text.trim().slice(0, 200)}` : ""}`);
        });
        res.on("error", (error) => fail(`failed: ${error.message}`));
      },
    );
    const timer = setTimeout(() => {
      req.destroy();
      fail(`did not answer within ${timeoutMs / 1000} s`);
    }, timeoutMs);
    req.on("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      // Through QEMU's forward a closed guest port shows as a reset connection, not a refusal.
      fail(error.code === "ECONNRESET" || error.code === "ECONNREFUSED" ? "could not connect: nothing listens on the hooks port" : `failed: ${error.message}`);
    });
    req.end(body);
  });
}
