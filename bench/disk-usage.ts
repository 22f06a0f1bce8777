import { stat, statfs } from "node:fs/promises";

/** A file's size as stat sees it, bytes. */
export interface FileSize {
  apparent: number;
  /** Blocks allocated on disk: less than `apparent` for a sparse file. */
  allocated: number;
}

export async function fileSize(path: string): Promise<FileSize> {
  const s = await stat(path);
  return { apparent: s.size, allocated: s.blocks * 512 };
}

/** Bytes an unprivileged process may still write on the file system that holds `path`. */
export async function freeBytes(path: string): Promise<number> {
  const s = await statfs(path);
  return s.bavail * s.bsize;
}
