// Measurements behind docs/research/guest-boot.md: boot time, QEMU memory,
// KVM detection, snapshot/restore (plain migration file, and file-backed RAM
// with x-ignore-shared). Needs the images run-demo.sh builds.
//   node bench.mjs --kernel K --initrd I --rootfs R --dir D [--runs 3] [--only boot,kvm,snapshot]
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, statSync, copyFileSync, readFileSync } from 'node:fs';
import { randomBytes, createHash } from 'node:crypto';
import { qemuArgs, startQemu, Qmp, AgentChannel, httpGet, rssMiB, processGone, sleep } from './qemu.mjs';

const { values: opt } = parseArgs({
  options: {
    kernel: { type: 'string' }, initrd: { type: 'string' }, rootfs: { type: 'string' },
    dir: { type: 'string' }, runs: { type: 'string', default: '3' },
    only: { type: 'string', default: 'boot,memory,kvm,snapshot,clones' },
  },
});
const only = new Set(opt.only.split(','));
const ms = (t) => Math.round(t);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

let seq = 0;
function vmDir() {
  const d = `${opt.dir}/vm${seq++}`;
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d, { recursive: true });
  return d;
}

/** Boots a VM and waits for "ready"; returns the live handles and timings. */
async function boot(o = {}, timeoutMs = 60000) {
  const dir = vmDir();
  const rootfs = `${dir}/root.img`;
  copyFileSync(opt.rootfs, rootfs); // each VM owns its disk (QEMU locks it)
  const args = qemuArgs({ kernel: opt.kernel, initrd: opt.initrd, rootfs, dir, ...o });
  const t0 = performance.now();
  const qemu = startQemu(args);
  const [qmp, agent] = await Promise.all([Qmp.connect(`${dir}/qmp.sock`), AgentChannel.connect(`${dir}/agent.sock`)]);
  const hello = agent.waitFor('hello', timeoutMs);
  const ready = agent.waitFor('ready', timeoutMs);
  const helloPayload = await hello;
  const tHello = performance.now() - t0;
  agent.send(`entropy ${randomBytes(64).toString('hex')}`);
  const readyPayload = await ready;
  const tReady = performance.now() - t0;
  const guestHello = Number(helloPayload.match(/uptime_ms=(\d+)/)[1]);
  const guestReady = Number(readyPayload.match(/uptime_ms=(\d+)/)[1]);
  return { dir, rootfs, args, qemu, qmp, agent, tHello, tReady, guestHello, guestReady };
}

async function stop(vm) {
  try { await vm.qmp.execute('quit'); } catch { /* QEMU closes the socket while answering */ }
  await Promise.race([vm.qemu.exited, sleep(5000)]);
  if (!processGone(vm.qemu.pid)) vm.qemu.kill('SIGKILL');
  await vm.qemu.exited;
}

async function benchBoot() {
  console.log('\n## boot time under TCG (host-measured from spawn; guest uptime in brackets)');
  const variants = [
    { name: 'default cpu, quiet', o: {} },
    { name: '-cpu max, quiet', o: { cpu: 'max' } },
    { name: 'default cpu, verbose console', o: { cmdline: 'console=ttyS0 root=/dev/vda rw panic=-1' } },
    { name: 'qboot firmware', o: { bios: '/usr/share/qemu/qboot.rom' } },
  ];
  for (const v of variants) {
    const hellos = [], readies = [], gh = [], gr = [];
    for (let i = 0; i < Number(opt.runs); i++) {
      const vm = await boot(v.o);
      hellos.push(vm.tHello); readies.push(vm.tReady); gh.push(vm.guestHello); gr.push(vm.guestReady);
      await stop(vm);
    }
    console.log(`${v.name}: agent ${ms(median(hellos))} ms [${median(gh)}], ready ${ms(median(readies))} ms [${median(gr)}]` +
      `  (runs: ${readies.map(ms).join(', ')})`);
  }
}

async function benchMemory() {
  console.log('\n## QEMU RSS (MiB): at ready / 6 s later');
  const variants = [
    { name: 'default', o: {} },
    { name: 'tb-size=32', o: { tbSizeMiB: 32 } },
    { name: 'tb-size=32 + balloon free-page-reporting', o: { tbSizeMiB: 32, balloon: true } },
  ];
  for (const memMiB of [128, 256]) {
    for (const v of variants) {
      const vm = await boot({ memMiB, ...v.o });
      const atReady = rssMiB(vm.qemu.pid);
      await httpGet(await vm.qmp.forwardedPort());
      await sleep(6000);
      console.log(`-m ${memMiB}, ${v.name}: ${atReady} / ${rssMiB(vm.qemu.pid)}  (boot to ready ${ms(vm.tReady)} ms)`);
      await stop(vm);
    }
  }
}

async function benchKvm() {
  console.log('\n## -accel kvm (20 s limit each)');
  for (const cpu of [undefined, 'host']) {
    const dir = vmDir();
    const rootfs = `${dir}/root.img`;
    copyFileSync(opt.rootfs, rootfs);
    const t0 = performance.now();
    const qemu = startQemu(qemuArgs({ kernel: opt.kernel, initrd: opt.initrd, rootfs, dir, accel: 'kvm', cpu }));
    const label = `-accel kvm${cpu ? ` -cpu ${cpu}` : ''}`;
    try {
      const agent = await AgentChannel.connect(`${dir}/agent.sock`);
      const outcome = await Promise.race([
        agent.waitFor('hello', 20000).then(() => `works: agent up after ${ms(performance.now() - t0)} ms`),
        qemu.exited.then(({ code, signal }) => `QEMU died (${code ?? signal}): ${qemu.output().trim().split('\n').pop()}`),
      ]);
      console.log(`${label}: ${outcome}`);
    } catch (err) {
      const last = readFileSync(`${dir}/console.log`, 'utf8').trim().split('\n').pop() || '(empty)';
      console.log(`${label}: no agent after 20 s; last console line: ${last}`);
    } finally {
      qemu.kill('SIGKILL');
      await qemu.exited;
    }
  }
}

/**
 * Snapshot a ready VM (stop + migrate to a file) and restore it in a new QEMU
 * (-incoming defer, migrate-incoming, cont) with a new host port forward.
 * fileRam: guest RAM in a file (share=on), x-ignore-shared, restore share=off.
 * balloon: free page reporting, given a few seconds to return free memory
 * before the snapshot (freed pages read as zero and leave the stream).
 */
async function snapshotRestore({ fileRam = false, balloon = false } = {}) {
  const label = (fileRam ? 'memory-backend-file + x-ignore-shared' : 'plain migration stream') +
    (balloon ? ', balloon free-page-reporting' : '');
  const memMiB = 256;
  const base = vmDir();
  const memFile = fileRam ? `${base}/ram` : undefined;
  const vm = await boot({ memMiB, memFile, share: true, balloon, tbSizeMiB: 32 });
  const port0 = await vm.qmp.forwardedPort();
  const before = await httpGet(port0);
  if (balloon) await sleep(5000);

  const snap = `${base}/state`;
  if (fileRam) {
    await vm.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
  }
  const t0 = performance.now();
  await vm.qmp.execute('stop');
  await vm.qmp.execute('migrate', { uri: `exec:cat > ${snap}` });
  await vm.qmp.waitMigration();
  const tSave = performance.now() - t0;
  await stop(vm);
  const snapBytes = statSync(snap).size;

  // Restore in a new QEMU: same devices, same disk, a new forward (port 0 = any free port).
  const dir = vmDir();
  const t1 = performance.now();
  const qemu = startQemu(qemuArgs({
    kernel: opt.kernel, initrd: opt.initrd, rootfs: vm.rootfs, dir, memMiB, memFile, share: false, incoming: true, balloon, tbSizeMiB: 32,
  }));
  const [qmp, agent] = await Promise.all([Qmp.connect(`${dir}/qmp.sock`), AgentChannel.connect(`${dir}/agent.sock`)]);
  const tSpawn = performance.now() - t1;
  if (fileRam) {
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
  }
  await qmp.execute('migrate-incoming', { uri: `exec:cat ${snap}` });
  await qmp.waitMigration();
  const status = (await qmp.execute('query-status')).status;
  await qmp.execute('cont');
  const tCont = performance.now() - t1;
  await agent.resync(); // ping round trip through the restored agent
  const tAgent = performance.now() - t1;
  const port = await qmp.forwardedPort();
  const after = await httpGet(port);
  const tHttp = performance.now() - t1;
  const rss = rssMiB(qemu.pid);
  console.log(`\n### ${label} (${memMiB} MiB guest)
before: ${before.body.trim()}
save: ${ms(tSave)} ms, state file ${(snapBytes / 1048576).toFixed(1)} MiB${fileRam ? `, RAM file ${(statSync(memFile).size / 1048576).toFixed(0)} MiB` : ''}
restore: QEMU up ${ms(tSpawn)} ms, migrate-incoming done (${status}) + cont ${ms(tCont)} ms, agent pong ${ms(tAgent)} ms, first HTTP 200 ${ms(tHttp)} ms (new port ${port}, request ${ms(after.ms)} ms)
after: ${after.body.trim()}
restored QEMU RSS: ${rss} MiB${fileRam ? ` (the RAM file's page cache is shared between restores)` : ''}`);
  await stop({ qemu, qmp });
}

/**
 * Several MicroVMs restored at once from one file-backed snapshot (share=off:
 * private copy-on-write mappings); each gets a qcow2 overlay on the disk as it
 * was at snapshot time. The RAM file and the base disk must come out unchanged.
 */
async function benchClones(count = 3) {
  console.log(`\n### ${count} concurrent restores of one memory-backend-file snapshot`);
  const memMiB = 256;
  const base = vmDir();
  const memFile = `${base}/ram`;
  const vm = await boot({ memMiB, memFile, share: true, tbSizeMiB: 32 });
  await vm.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
  await vm.qmp.execute('stop');
  await vm.qmp.execute('migrate', { uri: `exec:cat > ${base}/state` });
  await vm.qmp.waitMigration();
  await stop(vm);
  const digest = () => [memFile, vm.rootfs].map((f) => createHash('sha256').update(readFileSync(f)).digest('hex').slice(0, 12)).join();
  const before = digest();
  const t0 = performance.now();
  const clones = await Promise.all(Array.from({ length: count }, async () => {
    const dir = vmDir();
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', vm.rootfs, '-F', 'raw', `${dir}/root.qcow2`]);
    const qemu = startQemu(qemuArgs({
      kernel: opt.kernel, initrd: opt.initrd, rootfs: `${dir}/root.qcow2`, diskFormat: 'qcow2', dir, memMiB, memFile,
      share: false, incoming: true, tbSizeMiB: 32,
    }));
    const [qmp, agent] = await Promise.all([Qmp.connect(`${dir}/qmp.sock`), AgentChannel.connect(`${dir}/agent.sock`)]);
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await qmp.execute('migrate-incoming', { uri: `exec:cat ${base}/state` });
    await qmp.waitMigration();
    await qmp.execute('cont');
    await agent.resync();
    const res = await httpGet(await qmp.forwardedPort());
    return { qemu, qmp, agent, ms: performance.now() - t0, status: res.status };
  }));
  await sleep(500);
  console.log(clones.map((c, i) => `clone ${i}: HTTP ${c.status} at ${ms(c.ms)} ms, RSS ${rssMiB(c.qemu.pid)} MiB`).join('\n'));
  await Promise.all(clones.map((c) => stop(c)));
  console.log(`RAM file and base disk unchanged: ${digest() === before}`);
}

if (only.has('boot')) await benchBoot();
if (only.has('memory')) await benchMemory();
if (only.has('kvm')) await benchKvm();
if (only.has('snapshot')) {
  console.log('\n## snapshot / restore');
  await snapshotRestore();
  await snapshotRestore({ balloon: true });
  await snapshotRestore({ fileRam: true });
}
if (only.has('clones')) {
  await benchClones();
}
