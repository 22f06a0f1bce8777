import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { onLines } from "../../agent/lines.js";

/**
 * A client of QEMU's machine protocol (QMP): JSON objects, one per line.
 * Written here because QMP is a few lines of framing and no maintained npm
 * package speaks it. Commands are answered in order; events arrive between.
 *
 *   connect ─► greeting {"QMP":...} ─► qmp_capabilities ─► execute(...)*
 */
export class QmpError extends Error {
  constructor(
    readonly errorClass: string,
    description: string,
  ) {
    super(`${errorClass}: ${description}`);
    this.name = "QmpError";
  }
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
}

export class Qmp extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  private readonly pending: Pending[] = [];
  private closed = false;

  private constructor(private readonly socket: Socket) {
    super();
    onLines(socket, (line) => this.receive(line));
    socket.on("error", () => {}); // "close" follows and fails what is pending
    socket.on("close", () => {
      this.closed = true;
      for (const p of this.pending.splice(0)) p.reject(new Error("QMP connection closed"));
      this.emit("close");
    });
  }

  /** Takes a connected socket through the greeting and capability negotiation. */
  static async open(socket: Socket): Promise<Qmp> {
    const qmp = new Qmp(socket);
    // The greeting is the first line; it takes the place of an answer to a command.
    await new Promise<unknown>((resolve, reject) => qmp.pending.push({ resolve, reject }));
    await qmp.execute("qmp_capabilities");
    return qmp;
  }

  private receive(line: string): void {
    let message: { QMP?: unknown; event?: string; return?: unknown; error?: { class: string; desc: string } };
    try {
      message = JSON.parse(line);
    } catch {
      return; // QEMU writes only JSON here; a torn line at exit is not worth failing over
    }
    if (message.event) {
      this.emit("event", message as QmpEvent);
      return;
    }
    const waiter = this.pending.shift();
    if (!waiter) return;
    if (message.error) waiter.reject(new QmpError(message.error.class, message.error.desc));
    else waiter.resolve(message.QMP ?? message.return);
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new Error("QMP connection closed"));
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ resolve: resolve as (value: unknown) => void, reject });
      this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n");
    });
  }

  /** A human monitor (HMP) command, for what QMP lacks (hostfwd_add, info usernet). */
  hmp(commandLine: string): Promise<string> {
    return this.execute<string>("human-monitor-command", { "command-line": commandLine });
  }

  close(): void {
    this.socket.destroy();
  }
}
