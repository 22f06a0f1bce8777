import { connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

/** Calls `fn` with each complete line the socket delivers (UTF-8, without the newline). */
export function onLines(socket: Socket, fn: (line: string) => void): void {
  let buffer = "";
  socket.setEncoding("utf8");
  socket.on("data", (chunk: string) => {
    buffer += chunk;
    let newline: number;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      fn(line);
    }
  });
}

/**
 * Connects to a unix socket that a process we just started is about to create
 * (QEMU listens only once it has parsed its command line). Gives up at the
 * deadline or as soon as `abandoned()` says the process is gone.
 */
export async function connectWhenListening(path: string, timeoutMs: number, abandoned: () => boolean): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const socket = connect(path);
        socket.once("connect", () => {
          socket.off("error", reject);
          resolve(socket);
        });
        socket.once("error", reject);
      });
    } catch (error) {
      if (abandoned() || Date.now() > deadline) throw error;
      await sleep(10);
    }
  }
}
