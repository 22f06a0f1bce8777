/** The part of s3rver 3.7 (which ships no types) that the S3 artifact tests use. */
declare module "s3rver" {
  import type { AddressInfo } from "node:net";
  import type { Server } from "node:http";

  interface S3rverOptions {
    address?: string;
    port?: number;
    silent?: boolean;
    directory?: string;
    resetOnClose?: boolean;
    allowMismatchedSignatures?: boolean;
    vhostBuckets?: boolean;
    configureBuckets?: { name: string; configs?: (string | Buffer)[] }[];
  }

  class S3rver {
    constructor(options?: S3rverOptions);
    /** Starts listening; resolves to the bound address (port 0 picks a free port). */
    run(): Promise<AddressInfo>;
    close(): Promise<void>;
    /** Set once run() has resolved. */
    readonly httpServer: Server;
  }

  export = S3rver;
}
