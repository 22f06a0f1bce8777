#!/usr/bin/env node
import { Command } from "commander";
import { resolveConfig, defaultDataDir } from "../config/config.js";
import { startServer } from "../server.js";
import { baseCommand } from "./base.js";
import { caCommand } from "./ca.js";
import { statusCommand } from "./status.js";

/** The `microvms` command line. */
const program = new Command("microvms").description("Self-hosted AWS Lambda MicroVMs");

program
  .command("serve")
  .description("Run the control API (and, with a VM driver, the MicroVMs) in this process")
  .option("--data-dir <dir>", `data directory (MICROVMS_DATA_DIR; default ${defaultDataDir()})`)
  .option("--host <address>", "address to listen on (MICROVMS_HOST; default 127.0.0.1)")
  .option("--api-port <port>", "control API port (MICROVMS_API_PORT; default 9600; 0 picks a free port)")
  .option("--proxy-port <port>", "endpoint proxy port (MICROVMS_PROXY_PORT; default 9601)")
  .option("--database-url <url>", "PostgreSQL connection string (MICROVMS_DATABASE_URL; default SQLite in the data directory)")
  .option("--accounts-file <file>", "JSON file of access keys and their accounts (MICROVMS_ACCOUNTS_FILE; default <data dir>/accounts.json, else test/test)")
  .option("--log-level <level>", "trace, debug, info, warn or error (MICROVMS_LOG_LEVEL; default info)")
  .option("--max-live-microvms <n>", "MicroVMs not terminated per account and region (MICROVMS_MAX_LIVE_MICROVMS; default 100)")
  .option("--driver <driver>", "qemu, or none for a control plane without VMs (MICROVMS_DRIVER; default qemu)")
  .option(
    "--accel <mode>",
    "auto, kvm or tcg (MICROVMS_ACCEL; default auto: KVM when a probe VM boots under it, else TCG software emulation; " +
      "the choice is logged at start and shown by `microvms status`)",
  )
  .option("--cache-dir <dir>", "base images, guest initramfs, acceleration verdict (MICROVMS_CACHE_DIR; default <data dir>/cache)")
  .option("--max-concurrent-builds <n>", "image builds at once (MICROVMS_MAX_CONCURRENT_BUILDS; default 2)")
  .option("--start-timeout-seconds <n>", "how long an application may take to listen after its VM starts (MICROVMS_START_TIMEOUT_SECONDS; default 120)")
  .action(async (flags: Record<string, string>) => {
    const server = await startServer(resolveConfig(flags));
    const stop = (signal: string) => {
      server.log.info({ signal }, "shutting down");
      server.close().then(
        () => process.exit(0),
        (error: unknown) => {
          server.log.error({ err: error }, "shutdown failed");
          process.exit(1);
        },
      );
    };
    process.once("SIGINT", () => stop("SIGINT"));
    process.once("SIGTERM", () => stop("SIGTERM"));
  });

program.addCommand(baseCommand());
program.addCommand(caCommand());
program.addCommand(statusCommand());
program.parseAsync(process.argv).catch((error: unknown) => {
  console.error(`microvms: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
