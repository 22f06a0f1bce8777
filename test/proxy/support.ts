import type { ClientRequest, IncomingMessage } from "node:http";
import type { WebSocket } from "ws";

/**
 * Sends a request (made by `send`, with the callback it must pass as the
 * response listener) and collects the response body in the parts it arrived
 * in; `onFirstPart` runs when the first arrives (the guest then writes the rest).
 */
export function streamedParts(send: (onResponse: (res: IncomingMessage) => void) => ClientRequest, onFirstPart: () => void): Promise<string[]> {
  return new Promise<string[]>((resolve, reject) => {
    const req = send((res) => {
      const received: string[] = [];
      res.on("data", (c: Buffer) => {
        received.push(c.toString());
        if (received.length === 1) onFirstPart();
      });
      res.on("end", () => resolve(received));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

/** Waits for the WebSocket to open, sends each message and waits for its reply in turn, then closes it; returns the replies. */
export async function converse(ws: WebSocket, messages: string[]): Promise<string[]> {
  await new Promise((resolve, reject) => (ws.once("open", resolve), ws.once("error", reject)));
  const replies: string[] = [];
  for (const text of messages) {
    const reply = new Promise<string>((resolve) => ws.once("message", (data) => resolve(data.toString())));
    ws.send(text);
    replies.push(await reply);
  }
  ws.close();
  await new Promise((resolve) => ws.once("close", resolve));
  return replies;
}
