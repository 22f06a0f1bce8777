import { chmod, chown, copyFile, lstat, mkdir, open, readdir, readFile, rm, symlink, truncate, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";

/**
 * How each managed base image's root filesystem is made. A recipe fills an empty directory
 * with a complete root filesystem *without an init*: the image builder later copies the
 * tree with hard links, lays the code at /var/task, installs the guest agent as /sbin/init
 * and the kernel modules, and makes an ext4 disk of it. Every tree gets the same frame
 * (finishRootFilesystem): root and the unprivileged user `app` (1000:1000), /tmp 1777, an
 * empty /var/task, /etc/hosts, /etc/resolv.conf for QEMU user networking, /etc/hostname,
 * empty /dev /proc /sys /run, and no /sbin/init.
 *
 * A recipe's output must change only with its version: change a recipe, add a version to
 * the catalogue (managed-images.ts) and a recipe for it here.
 */

export interface RecipeContext {
  /** An empty directory owned by root, mode 0755: the root filesystem to fill. */
  root: string;
  /** Debian mirror for debootstrap, e.g. http://deb.debian.org/debian. */
  debianMirror: string;
  /** Downloaded .debs, shared by every Debian image in this base-images directory. */
  debianCacheDir: string;
  /** Runs a command (PATH includes the sbin directories), its output going to the build's progress; returns stdout when captured. */
  run(command: string, args: string[], opts?: { captureStdout?: boolean; debianPackage?: string }): Promise<string>;
  progress(line: string): void;
  /** Runs fn holding the lock of the shared .deb cache (debootstrap writes into it unlocked). */
  withDebianCache<T>(fn: () => Promise<T>): Promise<T>;
}

export interface BaseImageRecipe {
  name: string;
  version: string;
  build(ctx: RecipeContext): Promise<void>;
}

const APP_UID = 1000;
const APP_GID = 1000;
const DEBIAN_SUITE = "bookworm";

// ---------------------------------------------------------------------------------------
// The frame every image gets.

/** Replaces whatever is at path (a symlink is replaced, never followed out of the tree). */
async function writeFresh(path: string, text: string, mode = 0o644): Promise<void> {
  await rm(path, { force: true });
  await writeFile(path, text, { mode });
  await chmod(path, mode);
}

async function emptyDirectory(path: string, keep: readonly string[] = []): Promise<void> {
  await mkdir(path, { recursive: true });
  for (const entry of await readdir(path)) if (!keep.includes(entry)) await rm(join(path, entry), { recursive: true, force: true });
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

async function finishRootFilesystem(root: string): Promise<void> {
  for (const dir of ["dev", "proc", "sys", "run"]) await emptyDirectory(join(root, dir));
  await mkdir(join(root, "tmp"), { recursive: true });
  await chmod(join(root, "tmp"), 0o1777);
  await rm(join(root, "var", "task"), { recursive: true, force: true });
  await mkdir(join(root, "var", "task"), { recursive: true, mode: 0o755 });
  await writeFresh(join(root, "etc", "hosts"), "127.0.0.1\tlocalhost microvm\n::1\tlocalhost ip6-localhost ip6-loopback\n");
  await writeFresh(join(root, "etc", "resolv.conf"), "nameserver 10.0.2.3\n"); // QEMU user networking's DNS
  await writeFresh(join(root, "etc", "hostname"), "microvm\n");
  // The guest agent becomes /sbin/init; an init a package brought must not stand in its way.
  await rm(join(root, "sbin", "init"), { force: true });
}

// ---------------------------------------------------------------------------------------
// busybox: Debian's busybox-static and its applet links, as the guest research verified (docs/research/guest-boot.md).

const BUSYBOX_CANDIDATES = ["/bin/busybox", "/usr/bin/busybox"];

/** True when the ELF file at path has no program interpreter (PT_INTERP), i.e. is statically linked. */
export async function isStaticElf(path: string): Promise<boolean> {
  const file = await open(path, "r");
  try {
    const header = Buffer.alloc(64);
    await file.read(header, 0, 64, 0);
    if (header.readUInt32BE(0) !== 0x7f454c46) return false; // "\x7fELF"
    const is64 = header[4] === 2;
    const little = header[5] === 1;
    const u16 = (b: Buffer, o: number) => (little ? b.readUInt16LE(o) : b.readUInt16BE(o));
    const u32 = (b: Buffer, o: number) => (little ? b.readUInt32LE(o) : b.readUInt32BE(o));
    const phoff = is64 ? Number(little ? header.readBigUInt64LE(32) : header.readBigUInt64BE(32)) : u32(header, 28);
    const phentsize = u16(header, is64 ? 54 : 42);
    const phnum = u16(header, is64 ? 56 : 44);
    const table = Buffer.alloc(phentsize * phnum);
    await file.read(table, 0, table.length, phoff);
    for (let i = 0; i < phnum; i++) if (u32(table, i * phentsize) === 3 /* PT_INTERP */) return false;
    return true;
  } finally {
    await file.close();
  }
}

async function hostStaticBusybox(): Promise<string> {
  for (const path of BUSYBOX_CANDIDATES) {
    if (!(await exists(path))) continue;
    if (await isStaticElf(path)) return path;
    throw new Error(`${path} is not statically linked: install the Debian package busybox-static (it replaces busybox)`);
  }
  throw new Error(`no BusyBox at ${BUSYBOX_CANDIDATES.join(" or ")}: install the Debian package busybox-static`);
}

async function buildBusybox(ctx: RecipeContext): Promise<void> {
  const { root } = ctx;
  const busybox = await hostStaticBusybox();
  ctx.progress(`installing ${busybox} (static) and its applet links`);
  for (const dir of ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "var/task"]) {
    await mkdir(join(root, dir), { recursive: true, mode: 0o755 });
  }
  await chmod(join(root, "root"), 0o700);
  await copyFile(busybox, join(root, "bin", "busybox"));
  await chmod(join(root, "bin", "busybox"), 0o755);

  const applets = (await ctx.run(busybox, ["--list-full"], { captureStdout: true, debianPackage: "busybox-static" }))
    .split("\n")
    .map((line) => line.trim())
    .filter((applet) => applet !== "" && !["sbin/init", "linuxrc", "bin/busybox"].includes(applet));
  for (const applet of applets) {
    const link = join(root, applet);
    await mkdir(dirname(link), { recursive: true });
    await rm(link, { force: true });
    await symlink("/bin/busybox", link);
  }
  ctx.progress(`${applets.length} applets linked`);

  await writeFresh(
    join(root, "etc", "passwd"),
    `root:x:0:0:root:/root:/bin/sh\napp:x:${APP_UID}:${APP_GID}:app:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n`,
  );
  await writeFresh(join(root, "etc", "group"), `root:x:0:\napp:x:${APP_GID}:\nnogroup:x:65534:\n`);
  await writeFresh(join(root, "etc", "shadow"), "root:*:19000:0:99999:7:::\napp:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o640);
  await finishRootFilesystem(root);
}

// ---------------------------------------------------------------------------------------
// Debian 12: debootstrap's minbase variant plus packages, trimmed.

/** Lines appended when `app` is missing; base-passwd has nothing at 1000. */
async function addAppUser(root: string): Promise<void> {
  const files: [string, string][] = [
    ["passwd", `app:x:${APP_UID}:${APP_GID}:app:/home/app:/bin/bash\n`],
    ["group", `app:x:${APP_GID}:\n`],
    ["shadow", "app:*:19000:0:99999:7:::\n"],
    ["gshadow", "app:!::\n"],
  ];
  for (const [name, line] of files) {
    const path = join(root, "etc", name);
    const text = await readFile(path, "utf8");
    if (text.split("\n").some((l) => l.startsWith("app:"))) continue;
    const taken = name === "passwd" || name === "group" ? text.split("\n").find((l) => l.split(":")[2] === String(APP_UID)) : undefined;
    if (taken) throw new Error(`/etc/${name} of the Debian tree already uses id ${APP_UID}: ${taken}`);
    await writeFile(path, `${text}${text.endsWith("\n") || text === "" ? "" : "\n"}${line}`);
  }
  const home = join(root, "home", "app");
  await mkdir(home, { recursive: true, mode: 0o755 });
  await chown(home, APP_UID, APP_GID);
}

/** Keeps what runs and the licences (/usr/share/doc/<pkg>/copyright); drops caches, manuals, translations, logs. */
async function trimDebian(root: string): Promise<void> {
  await emptyDirectory(join(root, "var", "lib", "apt", "lists"), ["partial", "lock"]);
  for (const entry of await readdir(join(root, "var", "cache", "apt", "archives"))) {
    if (entry.endsWith(".deb")) await rm(join(root, "var", "cache", "apt", "archives", entry), { force: true });
  }
  for (const entry of await readdir(join(root, "var", "cache", "apt"))) {
    if (entry.endsWith(".bin")) await rm(join(root, "var", "cache", "apt", entry), { force: true });
  }
  const share = join(root, "usr", "share");
  for (const dir of ["man", "info"]) await emptyDirectory(join(share, dir));
  for (const entry of await readdir(join(share, "locale"))) {
    if (entry !== "locale.alias") await rm(join(share, "locale", entry), { recursive: true, force: true });
  }
  for (const pkg of await readdir(join(share, "doc"))) {
    const dir = join(share, "doc", pkg);
    if (!(await lstat(dir)).isDirectory()) continue; // links to another package's docs stay
    for (const entry of await readdir(dir)) if (entry !== "copyright") await rm(join(dir, entry), { recursive: true, force: true });
  }
  // The same trimming for packages installed later in the guest, as Debian's slim container images do.
  await mkdir(join(root, "etc", "dpkg", "dpkg.cfg.d"), { recursive: true });
  await writeFresh(
    join(root, "etc", "dpkg", "dpkg.cfg.d", "microvms-trim"),
    [
      "# microvms base image: no manuals, documentation or translations (copyright files stay)",
      "path-exclude /usr/share/doc/*",
      "path-include /usr/share/doc/*/copyright",
      "path-exclude /usr/share/man/*",
      "path-exclude /usr/share/info/*",
      "path-exclude /usr/share/locale/*",
      "path-include /usr/share/locale/locale.alias",
      "",
    ].join("\n"),
  );
  await rm(join(root, "var", "log", "bootstrap.log"), { force: true });
  for (const log of ["dpkg.log", "alternatives.log", "apt/history.log", "apt/term.log", "apt/eipp.log.xz"]) {
    if (await exists(join(root, "var", "log", log))) await truncate(join(root, "var", "log", log));
  }
  // Each VM must make its own identity: an empty machine-id is systemd's "generate at boot".
  if (await exists(join(root, "etc", "machine-id"))) await writeFresh(join(root, "etc", "machine-id"), "", 0o444);
  await rm(join(root, "var", "lib", "dbus", "machine-id"), { force: true });
}

function debianRecipe(name: string, version: string, packages: string[]): BaseImageRecipe {
  return {
    name,
    version,
    async build(ctx) {
      if (process.getuid?.() !== 0) {
        throw new Error(
          `building base image ${name} needs root (debootstrap chroots and installs files owned by root): ` +
            `run \`sudo microvms base build ${name}\` once, or run the server as root`,
        );
      }
      const args = ["--variant=minbase", `--cache-dir=${ctx.debianCacheDir}`];
      if (packages.length > 0) args.push(`--include=${packages.join(",")}`);
      args.push(DEBIAN_SUITE, ctx.root, ctx.debianMirror);
      ctx.progress(`debootstrap ${DEBIAN_SUITE} from ${ctx.debianMirror}${packages.length > 0 ? ` with ${packages.join(", ")}` : ""}`);
      await mkdir(ctx.debianCacheDir, { recursive: true });
      await ctx.withDebianCache(async () => {
        try {
          await ctx.run("debootstrap", args, { debianPackage: "debootstrap" });
        } catch (error) {
          // debootstrap's own log holds the failing step's details.
          const log = await readFile(join(ctx.root, "debootstrap", "debootstrap.log"), "utf8").catch(() => "");
          const tail = log.trim().split("\n").slice(-10).join("\n");
          if (error instanceof Error && tail) error.message += `\ndebootstrap.log:\n${tail}`;
          throw error;
        }
      });
      ctx.progress("trimming apt caches, manuals, documentation and translations");
      await trimDebian(ctx.root);
      await addAppUser(ctx.root);
      await finishRootFilesystem(ctx.root);
    },
  };
}

// ---------------------------------------------------------------------------------------

const recipes: readonly BaseImageRecipe[] = [
  { name: "busybox", version: "1", build: buildBusybox },
  debianRecipe("debian-12-minimal", "1", []),
  // Debian 12 ships Node.js 18 and Python 3.11; ca-certificates so that HTTPS clients work.
  debianRecipe("nodejs-18", "1", ["nodejs", "ca-certificates"]),
  debianRecipe("python-3.11", "1", ["python3", "ca-certificates"]),
];

export function findRecipe(name: string, version: string): BaseImageRecipe | undefined {
  return recipes.find((r) => r.name === name && r.version === version);
}
