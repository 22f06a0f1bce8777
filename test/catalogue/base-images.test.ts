import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { pino } from "pino";
import { BaseImages } from "../../src/catalogue/base-images.js";
import { managedImages } from "../../src/catalogue/catalogue.js";
import { findRecipe } from "../../src/catalogue/recipes.js";

const run = promisify(execFile);

/** A logger whose records the test can count. */
function recordingLogger() {
  const records: { msg: string }[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split("\n")) if (line) records.push(JSON.parse(line) as { msg: string });
      done();
    },
  });
  return { log: pino({ level: "debug" }, stream), builds: () => records.filter((r) => r.msg.startsWith("building ")).length };
}

describe("managed base images", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "microvms-base-images-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("have a recipe for every catalogue version", () => {
    for (const image of managedImages) {
      for (const version of image.versions) assert.ok(findRecipe(image.name, version), `${image.name}/${version}`);
    }
  });

  it("build busybox once for concurrent callers, with a complete root filesystem", async () => {
    const { log, builds } = recordingLogger();
    const images = new BaseImages({ dir: join(dir, "shared"), log });
    assert.equal(await images.find("busybox", "1"), undefined);

    const progress: string[] = [];
    const [a, b] = await Promise.all([images.ensure("busybox", "1", (line) => progress.push(line)), images.ensure("busybox", "1")]);
    assert.deepEqual(a, b);
    assert.equal(builds(), 1);
    assert.ok(progress.some((line) => line.includes("applets linked")), progress.join("\n"));
    assert.ok(a.sizeInBytes > 500_000);

    const found = await images.find("busybox", "1");
    assert.ok(found);
    assert.deepEqual(found, a);
    assert.ok(found.builtAt instanceof Date && !Number.isNaN(found.builtAt.getTime()));
    assert.deepEqual(await images.ensure("busybox", "1"), a, "a second ensure returns the cached build");
    assert.equal(builds(), 1);

    const root = a.rootDir;
    const passwd = await readFile(join(root, "etc", "passwd"), "utf8");
    assert.match(passwd, /^root:x:0:0:/m);
    assert.match(passwd, /^app:x:1000:1000:/m);
    assert.match(await readFile(join(root, "etc", "group"), "utf8"), /^app:x:1000:/m);
    assert.equal((await stat(join(root, "tmp"))).mode & 0o7777, 0o1777);
    assert.deepEqual(await readdir(join(root, "var", "task")), []);
    for (const empty of ["dev", "proc", "sys", "run"]) assert.deepEqual(await readdir(join(root, empty)), [], empty);
    assert.equal(await readFile(join(root, "etc", "resolv.conf"), "utf8"), "nameserver 10.0.2.3\n");
    assert.equal((await readFile(join(root, "etc", "hostname"), "utf8")).trim(), "microvm");
    assert.match(await readFile(join(root, "etc", "hosts"), "utf8"), /^127\.0\.0\.1\s+localhost/m);
    await assert.rejects(stat(join(root, "sbin", "init")), { code: "ENOENT" }, "the agent becomes /sbin/init");
    assert.equal(await readlink(join(root, "bin", "sh")), "/bin/busybox");

    const { stdout } = await run(join(root, "bin", "busybox"), ["sh", "-c", "echo ok"]);
    assert.equal(stdout, "ok\n");
    if (process.getuid?.() === 0) {
      const inside = await run("chroot", [root, "/bin/sh", "-c", "id app && ls /var/task"], { env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" } });
      assert.match(inside.stdout, /uid=1000\(app\) gid=1000\(app\)/);
      assert.equal((await stat(join(root, "etc", "passwd"))).uid, 0);
    }
  });

  it("build once when two instances (as two processes would) share a directory", async () => {
    const { log, builds } = recordingLogger();
    const shared = join(dir, "two");
    const [a, b] = await Promise.all([new BaseImages({ dir: shared, log }).ensure("busybox", "1"), new BaseImages({ dir: shared, log }).ensure("busybox", "1")]);
    assert.deepEqual(a, b);
    assert.equal(builds(), 1);
  });

  it("replace what a crashed build left, never taking it for a finished one", async () => {
    const { log } = recordingLogger();
    const images = new BaseImages({ dir: join(dir, "crashed"), log });
    const imageDir = join(dir, "crashed", "busybox");
    await mkdir(join(imageDir, ".1.building-1-dead", "root", "bin"), { recursive: true });
    await mkdir(join(imageDir, "1", "root"), { recursive: true }); // renamed without a manifest: cannot happen, but must not count
    await writeFile(join(imageDir, "1", "root", "junk"), "x");
    assert.equal(await images.find("busybox", "1"), undefined);

    const build = await images.ensure("busybox", "1");
    assert.deepEqual((await readdir(imageDir)).sort(), ["1", "1.lock"]);
    await assert.rejects(stat(join(build.rootDir, "junk")), { code: "ENOENT" });
    assert.ok((await stat(join(build.rootDir, "bin", "busybox"))).isFile());
  });

  it("refuse an unknown image or version with a clear error", async () => {
    const images = new BaseImages({ dir: join(dir, "unknown"), log: recordingLogger().log });
    await assert.rejects(images.ensure("alpine", "1"), /unknown managed base image "alpine" \(known: busybox, /);
    await assert.rejects(images.ensure("busybox", "7"), /managed base image busybox has no version "7" \(versions: 1\)/);
    await assert.rejects(images.find("alpine", "1"), /unknown managed base image/);
  });
});
