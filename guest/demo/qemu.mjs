// Host side of the guest prototype: QEMU command lines, a QMP client and the
// agent channel client. Node.js only, no dependencies. The project's VM driver
// (TypeScript) is meant to grow from this; see docs/research/guest-boot.md.
import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { readFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import { randomBytes } from 'node:crypto';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * QEMU arguments for one MicroVM. dir holds its sockets and console log.
 * memFile: back guest RAM with this file (share=true while building a snapshot,
 * false when restoring: private, copy-on-write mapping of the snapshot).
 * tbSizeMiB: TCG translation cache (QEMU's default lets it grow to ~55 MiB RSS).
 * balloon: virtio-balloon free page reporting, so memory the guest frees
 * (e.g. the kernel's decompression buffers) goes back to the host.
 * bios: firmware image, e.g. /usr/share/qemu/qboot.rom instead of SeaBIOS.
 * diskFormat: 'qcow2' for a per-VM overlay on the image's (read-only) disk.
 */
export function qemuArgs({
  kernel, initrd, rootfs, dir, memMiB = 256, accel = 'tcg', cpu, tbSizeMiB, balloon = false, bios, diskFormat = 'raw',
  cmdline = 'console=ttyS0 root=/dev/vda rw panic=-1 quiet',
  guestPort = 8080, hostPort = 0, memFile, share = true, incoming = false,
}) {
  const machine = memFile ? 'q35,memory-backend=mem' : 'q35';
  return [
    '-M', machine, '-accel', accel === 'tcg' && tbSizeMiB ? `tcg,tb-size=${tbSizeMiB}` : accel,
    ...(cpu ? ['-cpu', cpu] : []), ...(bios ? ['-bios', bios] : []),
    '-m', String(memMiB), '-smp', '1',
    ...(memFile ? ['-object', `memory-backend-file,id=mem,size=${memMiB}M,mem-path=${memFile},share=${share ? 'on' : 'off'}`] : []),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-kernel', kernel, '-initrd', initrd, '-append', cmdline,
    '-serial', `file:${dir}/console.log`,
    '-drive', `file=${rootfs},format=${diskFormat},if=none,id=root`,
    '-device', 'virtio-blk-pci,drive=root',
    '-netdev', `user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:${hostPort}-:${guestPort}`,
    '-device', 'virtio-net-pci,netdev=net0',
    '-device', 'virtio-serial-pci',
    '-chardev', `socket,id=agent,path=${dir}/agent.sock,server=on,wait=off`,
    '-device', 'virtserialport,chardev=agent,name=microvms.agent',
    ...(balloon ? ['-device', 'virtio-balloon-pci,free-page-reporting=on'] : []),
    '-qmp', `unix:${dir}/qmp.sock,server=on,wait=off`,
    ...(incoming ? ['-incoming', 'defer'] : []),
  ];
}

export function startQemu(args, { log } = {}) {
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; if (log) log(String(d).trimEnd()); });
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.output = () => output;
  return child;
}

/** Connects to a unix socket QEMU is about to create. */
async function connectWhenReady(path, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise((resolve, reject) => {
        const s = net.createConnection(path);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(5);
    }
  }
}

/** Splits a stream into lines. */
function onLines(socket, fn) {
  let buf = '';
  socket.setEncoding('utf8');
  socket.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      fn(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
}

export class Qmp extends EventEmitter {
  static async connect(path) {
    const q = new Qmp(await connectWhenReady(path));
    await q.greeting;
    await q.execute('qmp_capabilities');
    return q;
  }

  constructor(socket) {
    super();
    this.socket = socket;
    this.pending = [];
    this.greeting = new Promise((resolve) => this.once('greeting', resolve));
    onLines(socket, (line) => {
      const msg = JSON.parse(line);
      if (msg.QMP) this.emit('greeting', msg);
      else if (msg.event) this.emit('event', msg);
      else {
        const p = this.pending.shift();
        if (msg.error) p.reject(new Error(`${msg.error.class}: ${msg.error.desc}`));
        else p.resolve(msg.return);
      }
    });
    socket.on('close', () => this.pending.splice(0).forEach((p) => p.reject(new Error('QMP closed'))));
  }

  execute(command, args) {
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    });
  }

  hmp(commandLine) {
    return this.execute('human-monitor-command', { 'command-line': commandLine });
  }

  /** The host port QEMU picked for hostfwd=tcp:127.0.0.1:0-:<guestPort>. */
  async forwardedPort(guestPort = 8080) {
    const text = await this.hmp('info usernet');
    for (const line of text.split('\n')) {
      const m = line.match(/TCP\[HOST_FORWARD\]\s+\d+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)/);
      if (m && Number(m[4]) === guestPort) return Number(m[2]);
    }
    throw new Error(`no host forward to guest port ${guestPort} in:\n${text}`);
  }

  /** Runs a migration (snapshot) and waits for it; returns query-migrate's answer. */
  async waitMigration() {
    for (;;) {
      const r = await this.execute('query-migrate');
      if (r.status === 'completed') return r;
      if (r.status === 'failed' || r.status === 'cancelled') throw new Error(`migration ${r.status}: ${r['error-desc'] ?? ''}`);
      await sleep(5);
    }
  }
}

/** The agent's line protocol (see guest/agent/agent.c). */
export class AgentChannel extends EventEmitter {
  static async connect(path) {
    return new AgentChannel(await connectWhenReady(path));
  }

  constructor(socket) {
    super();
    this.socket = socket;
    onLines(socket, (line) => {
      const sp = line.indexOf(' ');
      const kind = sp < 0 ? line : line.slice(0, sp);
      const payload = sp < 0 ? '' : unescape(line.slice(sp + 1));
      this.emit('frame', { kind, payload, at: performance.now() });
    });
  }

  send(line) { this.socket.write(line + '\n'); }

  waitFor(kind, timeoutMs = 60000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "${kind}" from the agent in ${timeoutMs} ms`)), timeoutMs);
      const on = (f) => {
        if (f.kind !== kind) return;
        clearTimeout(timer);
        this.off('frame', on);
        resolve(f.payload);
      };
      this.on('frame', on);
    });
  }

  /** Requests are handled in order, so a pong confirms everything sent before it. */
  async ping(timeoutMs = 10000) {
    const token = randomBytes(4).toString('hex');
    const pong = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no pong')), timeoutMs);
      const on = (f) => {
        if (f.kind !== 'pong' || f.payload !== token) return;
        clearTimeout(timer);
        this.off('frame', on);
        resolve();
      };
      this.on('frame', on);
    });
    this.send(`ping ${token}`);
    return pong;
  }

  /** After a restore: correct the clock, reseed the RNG, then confirm. */
  async resync() {
    const ms = Date.now();
    this.send(`time ${Math.floor(ms / 1000)} ${(ms % 1000) * 1000000}`);
    this.send(`entropy ${randomBytes(64).toString('hex')}`);
    await this.ping();
  }

  close() { this.socket.destroy(); }
}

export function unescape(s) {
  return s.replace(/\\(x[0-9a-fA-F]{2}|.)/g, (_, e) =>
    e[0] === 'x' ? String.fromCharCode(parseInt(e.slice(1), 16)) : ({ n: '\n', r: '\r', t: '\t', '\\': '\\' })[e] ?? e);
}

/** Resident set size of a process in MiB (from /proc, Linux only). */
export function rssMiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return m ? Math.round(Number(m[1]) / 1024) : NaN;
}

export function processGone(pid) {
  if (!existsSync(`/proc/${pid}`)) return true;
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z'; // reaped by nobody yet
}

export async function httpGet(port, path = '/', timeoutMs = 5000) {
  const t0 = performance.now();
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(timeoutMs) });
  const body = await res.text();
  return { status: res.status, body, ms: performance.now() - t0 };
}
