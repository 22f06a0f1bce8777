/**
 * The agent's configuration file, /etc/microvms/agent.conf on every image disk
 * (format documented at the top of guest/agent/agent.c). It lives on the disk,
 * not on the kernel command line, because environments outgrow the command
 * line's 2 KiB and because the disk is what gets snapshotted.
 */
export interface AgentConfig {
  /** The application's argv. */
  args: string[];
  environment: Record<string, string>;
  workdir: string;
  /** "root", or uid:gid of the unprivileged user. */
  user: "root" | `${number}:${number}`;
  /** The port whose listening socket means the application is ready; 0 for none. */
  readyPort: number;
}

export const CONFIG_PATH = "etc/microvms/agent.conf";

/** The agent's escapes: backslash, \n, \r, \t and \xHH for other control characters (never NUL). */
function escapeValue(value: string): string {
  return value.replace(/[\\\n\r\t\x01-\x1f\x7f]/g, (c) => {
    if (c === "\\") return "\\\\";
    if (c === "\n") return "\\n";
    if (c === "\r") return "\\r";
    if (c === "\t") return "\\t";
    return `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`;
  });
}

export function renderAgentConfig(config: AgentConfig): string {
  for (const [name, value] of Object.entries(config.environment)) {
    if (name.includes("=") || name.includes("\0") || value.includes("\0")) throw new Error(`environment variable ${JSON.stringify(name)} cannot be passed to the guest`);
  }
  const lines = [
    "# written by the microvms image builder",
    `user ${config.user}`,
    `workdir ${escapeValue(config.workdir)}`,
    `ready_port ${config.readyPort}`,
    ...config.args.map((a) => `arg ${escapeValue(a)}`),
    ...Object.entries(config.environment).map(([name, value]) => `env ${escapeValue(`${name}=${value}`)}`),
  ];
  return lines.join("\n") + "\n";
}
