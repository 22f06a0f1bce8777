import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { onLines } from "./lines.js";

/**
 * The host end of the guest agent's channel (a virtio-serial port; protocol
 * documented at the top of guest/agent/agent.c). Frames are text lines
 * "<kind> <escaped payload>".
 *
 *   guest ─► host: hello, log, stdout, stderr, ready, exit, pong, error, dropped
 *   host ─► guest: ping, time, entropy, poweroff
 *
 * The agent answers requests only on failure, so `ping` (answered by a pong)
 * confirms that everything sent before it took effect.
 */
export interface AgentFrame {
  kind: string;
  payload: string;
}

/** Reverses the agent's escape(): \\ \n \r \t and \xHH. */
export function unescapeFrame(text: string): string {
  return text.replace(/\\(x[0-9a-fA-F]{2}|[\\nrt])/g, (_, e: string) => {
    if (e[0] === "x") return String.fromCharCode(parseInt(e.slice(1), 16));
    return e === "n" ? "\n" : e === "r" ? "\r" : e === "t" ? "\t" : "\\";
  });
}

export function parseFrame(line: string): AgentFrame {
  const space = line.indexOf(" ");
  if (space < 0) return { kind: line, payload: "" };
  return { kind: line.slice(0, space), payload: unescapeFrame(line.slice(space + 1)) };
}

export class AgentChannel extends EventEmitter<{ frame: [AgentFrame]; close: [] }> {
  constructor(private readonly socket: Socket) {
    super();
    onLines(socket, (line) => this.emit("frame", parseFrame(line)));
    socket.on("error", () => {}); // "close" follows
    socket.on("close", () => this.emit("close"));
  }

  private send(line: string): void {
    if (!this.socket.destroyed) this.socket.write(line + "\n");
  }

  /** Resolves at the pong for a fresh token, which the agent sends after handling every earlier request. */
  ping(timeoutMs: number): Promise<void> {
    const token = randomBytes(4).toString("hex");
    return new Promise<void>((resolve, reject) => {
      const done = (error?: Error) => {
        clearTimeout(timer);
        this.off("frame", onFrame);
        this.off("close", onClose);
        if (error) reject(error);
        else resolve();
      };
      const onFrame = (frame: AgentFrame) => {
        if (frame.kind === "pong" && frame.payload === token) done();
      };
      const onClose = () => done(new Error("the agent channel closed"));
      const timer = setTimeout(() => done(new Error(`the agent did not answer within ${timeoutMs} ms`)), timeoutMs);
      this.on("frame", onFrame);
      this.on("close", onClose);
      this.send(`ping ${token}`);
    });
  }

  /**
   * Sets the guest clock to the host's and gives it fresh randomness: at first
   * boot (the guest has no RTC sync and, under TCG, no RDRAND) and after every
   * restore, so that clones of one snapshot do not share a random state.
   */
  async resync(timeoutMs: number): Promise<void> {
    const ms = Date.now();
    this.send(`time ${Math.floor(ms / 1000)} ${(ms % 1000) * 1_000_000}`);
    this.send(`entropy ${randomBytes(64).toString("hex")}`);
    await this.ping(timeoutMs);
  }

  /** Asks the agent to stop the application and power the VM off. */
  powerOff(): void {
    this.send("poweroff");
  }

  close(): void {
    this.socket.destroy();
  }
}
