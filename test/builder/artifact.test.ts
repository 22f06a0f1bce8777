import assert from "node:assert/strict";
import { createWriteStream } from "node:fs";
import { chmod, lstat, mkdir, readFile, readlink, readdir, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { pathToFileURL } from "node:url";
import { describe, it } from "node:test";
import * as tar from "tar";
import { ZipFile } from "yazl";
import { fetchCodeArtifact } from "../../src/builder/artifact.js";
import { assertRejects, exists, scratchRoot } from "./support.js";

const freshDir = scratchRoot("microvms-artifact-");

/** A fresh directory under the test's root: `work/` holds inputs, `work/dest/` the unpacked artifact. */
async function workspace(): Promise<{ work: string; dest: string }> {
  const work = await freshDir();
  const dest = join(work, "dest");
  await mkdir(dest);
  return { work, dest };
}

const uriOf = (path: string) => pathToFileURL(path).href;

interface ZipEntry {
  name: string;
  content?: string;
  /** Unix mode including the file type; 0 leaves the zip without one, as Windows tools do. */
  mode?: number;
}

async function makeZip(path: string, entries: ZipEntry[]): Promise<void> {
  const zip = new ZipFile();
  for (const { name, content, mode } of entries) {
    if (content === undefined) zip.addEmptyDirectory(name, mode === undefined ? {} : { mode });
    else zip.addBuffer(Buffer.from(content), name, mode === undefined ? {} : { mode });
  }
  zip.end();
  await pipeline(zip.outputStream, createWriteStream(path));
}

interface TarEntry {
  path: string;
  type: "File" | "Directory" | "SymbolicLink";
  content?: string;
  linkpath?: string;
}

/** A tar written header by header, for entries a well-behaved archiver would not produce. */
async function makeRawTar(path: string, entries: TarEntry[]): Promise<void> {
  const blocks: Buffer[] = [];
  for (const { path: name, type, content = "", linkpath } of entries) {
    const body = Buffer.from(content);
    const header = new tar.Header({ path: name, type, linkpath, size: body.length, mode: type === "Directory" ? 0o755 : 0o644, mtime: new Date(0) });
    header.encode();
    blocks.push(header.block!, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  await writeFile(path, Buffer.concat(blocks));
}

/** An application folder: an executable bootstrap, a library file, a link and an empty directory. */
async function makeAppFolder(dir: string): Promise<void> {
  await mkdir(join(dir, "lib"), { recursive: true });
  await mkdir(join(dir, "empty"));
  await writeFile(join(dir, "bootstrap"), "#!/bin/sh\nexec ./lib/app\n", { mode: 0o755 });
  await writeFile(join(dir, "lib", "app"), "binary", { mode: 0o640 });
  await symlink("lib/app", join(dir, "app"));
  await chmod(join(dir, "bootstrap"), 0o755);
  await chmod(join(dir, "lib", "app"), 0o640);
}

async function assertAppFolder(dest: string): Promise<void> {
  assert.deepEqual((await readdir(dest)).sort(), ["app", "bootstrap", "empty", "lib"]);
  assert.equal((await stat(join(dest, "bootstrap"))).mode & 0o777, 0o755);
  assert.equal((await stat(join(dest, "lib", "app"))).mode & 0o777, 0o640);
  assert.equal(await readFile(join(dest, "lib", "app"), "utf8"), "binary");
  assert.equal(await readlink(join(dest, "app")), "lib/app");
  assert.ok((await lstat(join(dest, "empty"))).isDirectory());
}

const appSize = "#!/bin/sh\nexec ./lib/app\n".length + "binary".length;

describe("fetchCodeArtifact from file:// URIs", () => {
  it("copies a directory, keeping modes and symbolic links, from a percent-encoded URI", async () => {
    const { work, dest } = await workspace();
    const source = join(work, "my app");
    await makeAppFolder(source);
    const uri = uriOf(source);
    assert.match(uri, /my%20app$/);

    const result = await fetchCodeArtifact(uri, dest);

    assert.deepEqual(result, { sizeInBytes: appSize, entrypoint: "bootstrap" });
    await assertAppFolder(dest);
  });

  it("unpacks a zip, making a bootstrap without a mode executable", async () => {
    const { work, dest } = await workspace();
    const zip = join(work, "code.bin"); // recognised by content, not by name
    await makeZip(zip, [
      { name: "bootstrap", content: "#!/bin/sh\n", mode: 0 },
      { name: "lib/", mode: 0o40750 },
      { name: "lib/data.txt", content: "data", mode: 0o100600 },
      { name: "lib/link", content: "data.txt", mode: 0o120777 },
      { name: "readme.txt", content: "hello", mode: 0 },
    ]);

    const result = await fetchCodeArtifact(uriOf(zip), dest);

    assert.deepEqual(result, { sizeInBytes: "#!/bin/sh\n".length + "data".length + "hello".length, entrypoint: "bootstrap" });
    assert.equal((await stat(join(dest, "bootstrap"))).mode & 0o777, 0o755);
    assert.equal((await stat(join(dest, "readme.txt"))).mode & 0o777, 0o644);
    assert.equal((await stat(join(dest, "lib"))).mode & 0o777, 0o750);
    assert.equal((await stat(join(dest, "lib", "data.txt"))).mode & 0o777, 0o600);
    assert.equal(await readlink(join(dest, "lib", "link")), "data.txt");
    assert.equal(await readFile(join(dest, "lib", "link"), "utf8"), "data");
  });

  for (const gzip of [false, true]) {
    it(`unpacks a ${gzip ? "gzip-compressed " : ""}tar`, async () => {
      const { work, dest } = await workspace();
      const source = join(work, "app");
      await makeAppFolder(source);
      const archive = join(work, gzip ? "app.tgz" : "app.tar");
      await tar.c({ cwd: source, file: archive, gzip }, ["."]);

      const result = await fetchCodeArtifact(uriOf(archive), dest);

      assert.deepEqual(result, { sizeInBytes: appSize, entrypoint: "bootstrap" });
      await assertAppFolder(dest);
    });
  }

  it("explains a zip of the folder rather than of its contents", async () => {
    const { work, dest } = await workspace();
    const zip = join(work, "app.zip");
    await makeZip(zip, [
      { name: "app/", mode: 0o40755 },
      { name: "app/bootstrap", content: "#!/bin/sh\n", mode: 0o100755 },
      { name: "__MACOSX/app/._bootstrap", content: "", mode: 0o100644 },
    ]);
    await assertRejects(fetchCodeArtifact(uriOf(zip), dest), /found app\/bootstrap; zip the folder's contents, not the folder/);
  });

  it("requires a bootstrap file at the root", async () => {
    const { work, dest } = await workspace();
    const zip = join(work, "app.zip");
    await makeZip(zip, [{ name: "index.js", content: "1", mode: 0o100644 }]);
    const uri = uriOf(zip);
    await assertRejects(
      fetchCodeArtifact(uri, dest),
      new RegExp(`^Code artifact ${uri} has no bootstrap file at its root; the application starts from an executable bootstrap\\.$`),
    );
  });

  it("refuses a bootstrap that is a directory", async () => {
    const { work, dest } = await workspace();
    await mkdir(join(work, "app", "bootstrap"), { recursive: true });
    await assertRejects(fetchCodeArtifact(uriOf(join(work, "app")), dest), /has a directory named bootstrap at its root/);
  });

  it("says when the path does not exist", async () => {
    const { work, dest } = await workspace();
    const uri = uriOf(join(work, "missing.zip"));
    await assertRejects(fetchCodeArtifact(uri, dest), new RegExp(`^Code artifact ${uri} does not exist\\.$`));
  });

  it("says when a file is not an archive", async () => {
    const { work, dest } = await workspace();
    const text = join(work, "app.zip");
    await writeFile(text, "just some text, not a zip\n");
    const uri = uriOf(text);
    await assertRejects(fetchCodeArtifact(uri, dest), new RegExp(`^Code artifact ${uri} is not a directory, a zip or a tar archive\\.$`));
  });

  it("says when a gzip file does not hold a tar", async () => {
    const { work, dest } = await workspace();
    const { gzipSync } = await import("node:zlib");
    const file = join(work, "notes.gz");
    await writeFile(file, gzipSync(Buffer.from("plain text\n".repeat(100))));
    await assertRejects(fetchCodeArtifact(uriOf(file), dest), /is not a valid tar archive/);
  });

  it("says when the artifact cannot be read", { skip: process.getuid?.() === 0 && "root reads everything" }, async () => {
    const { work, dest } = await workspace();
    const zip = join(work, "app.zip");
    await makeZip(zip, [{ name: "bootstrap", content: "#!/bin/sh\n", mode: 0o100755 }]);
    await chmod(zip, 0);
    await assertRejects(fetchCodeArtifact(uriOf(zip), dest), /cannot be read: permission denied/);
  });

  it("refuses a zip entry that climbs out of the artifact and writes nothing outside", async () => {
    const { work, dest } = await workspace();
    const zip = join(work, "evil.zip");
    // yazl refuses to write "..", so write "xx/evil" and rename it in place in both headers.
    await makeZip(zip, [
      { name: "bootstrap", content: "#!/bin/sh\n", mode: 0o100755 },
      { name: "xx/evil", content: "pwned", mode: 0o100644 },
    ]);
    const bytes = await readFile(zip);
    const renamed = Buffer.from(bytes.toString("latin1").replaceAll("xx/evil", "../evil"), "latin1");
    assert.notDeepEqual(renamed, bytes);
    await writeFile(zip, renamed);

    await assertRejects(fetchCodeArtifact(uriOf(zip), dest), /has an entry "\.\.\/evil" that would be written outside the artifact/);
    assert.equal(await exists(join(work, "evil")), false);
  });

  it("refuses absolute entry paths in a tar", async () => {
    const { work, dest } = await workspace();
    const archive = join(work, "abs.tar");
    await makeRawTar(archive, [{ path: join(work, "abs-evil"), type: "File", content: "pwned" }]);
    await assertRejects(fetchCodeArtifact(uriOf(archive), dest), /that would be written outside the artifact/);
    assert.equal(await exists(join(work, "abs-evil")), false);
  });

  it("refuses a tar that writes through a symbolic link pointing outside", async () => {
    const { work, dest } = await workspace();
    const outside = join(work, "outside");
    await mkdir(outside);
    const archive = join(work, "escape.tar");
    await makeRawTar(archive, [
      { path: "bootstrap", type: "File", content: "#!/bin/sh\n" },
      { path: "link", type: "SymbolicLink", linkpath: outside },
      { path: "link/pwned", type: "File", content: "pwned" },
    ]);

    await assertRejects(fetchCodeArtifact(uriOf(archive), dest), /entry "link\/pwned" that would be written through the symbolic link "link"/);
    assert.deepEqual(await readdir(outside), []);
  });

  it("caps the unpacked size", async () => {
    const { work, dest } = await workspace();
    const zip = join(work, "big.zip");
    await makeZip(zip, [
      { name: "bootstrap", content: "#!/bin/sh\n", mode: 0o100755 },
      { name: "data", content: "x".repeat(1000), mode: 0o100644 },
    ]);
    await assertRejects(fetchCodeArtifact(uriOf(zip), dest, { maxUnpackedBytes: 100 }), /is larger than 100 bytes when unpacked/);
  });

  it("caps the unpacked size of a directory too", async () => {
    const { work, dest } = await workspace();
    const source = join(work, "app");
    await makeAppFolder(source);
    await assertRejects(fetchCodeArtifact(uriOf(source), dest, { maxUnpackedBytes: 10 }), /is larger than 10 bytes when unpacked/);
  });

  it("refuses file URIs that are not absolute", async () => {
    const { dest } = await workspace();
    for (const uri of ["file://relative/app.zip", "file:app.zip", "file:/app.zip"]) {
      await assertRejects(fetchCodeArtifact(uri, dest), /is not an absolute file URI; write it as file:\/\/\/absolute\/path/);
    }
  });
});

describe("fetchCodeArtifact from other sources", () => {
  it("hands s3:// URIs to the S3 fetcher (tested against s3rver in s3-artifact.test.ts)", async () => {
    const { dest } = await workspace();
    await assertRejects(fetchCodeArtifact("s3://bucket", dest), /^Code artifact s3:\/\/bucket names no object in bucket bucket/);
  });

  it("leaves OCI image references to the OCI fetcher", async () => {
    const { dest } = await workspace();
    await assertRejects(fetchCodeArtifact("localhost:5000/app:latest", dest), /is an OCI image reference/);
  });

  it("names an unknown scheme", async () => {
    const { dest } = await workspace();
    await assertRejects(fetchCodeArtifact("ftp://host/app.zip", dest), /has an unsupported scheme/);
  });
});
