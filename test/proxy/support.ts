import type { ClientRequest, IncomingMessage } from "node:http";

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
