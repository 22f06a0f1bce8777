// Boots one MicroVM, waits for the agent's "ready", sends an HTTP request
// through the host-forwarded port, powers the VM off through the agent and
// checks that QEMU is gone. Prints timings. Used by guest/run-demo.sh.
//   node demo.mjs --kernel K --initrd I --rootfs R --dir D [--mem 256] [--accel tcg]
import { parseArgs } from 'node:util';
import { mkdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { qemuArgs, startQemu, Qmp, AgentChannel, httpGet, rssMiB, processGone, sleep } from './qemu.mjs';

const { values: opt } = parseArgs({
  options: {
    kernel: { type: 'string' }, initrd: { type: 'string' }, rootfs: { type: 'string' },
    dir: { type: 'string' }, mem: { type: 'string', default: '256' }, accel: { type: 'string', default: 'tcg' },
  },
});
mkdirSync(opt.dir, { recursive: true });
const secs = (ms) => (ms / 1000).toFixed(2);

const args = qemuArgs({ kernel: opt.kernel, initrd: opt.initrd, rootfs: opt.rootfs, dir: opt.dir, memMiB: Number(opt.mem), accel: opt.accel });
console.log(`qemu-system-x86_64 ${args.map((a) => (a.includes(' ') ? `'${a}'` : a)).join(' ')}\n`);
const t0 = performance.now();
const qemu = startQemu(args, { log: (l) => console.log(`[qemu] ${l}`) });
const [qmp, agent] = await Promise.all([Qmp.connect(`${opt.dir}/qmp.sock`), AgentChannel.connect(`${opt.dir}/agent.sock`)]);
agent.on('frame', (f) => console.log(`[guest +${secs(f.at - t0)}s] ${f.kind} ${f.payload}`));

const hello = agent.waitFor('hello');
const ready = agent.waitFor('ready');
const exited = agent.waitFor('exit');
await hello;
const tHello = performance.now() - t0;
agent.send(`entropy ${randomBytes(64).toString('hex')}`); // seeds the guest CRNG (no RDRAND under TCG)
await ready;
const tReady = performance.now() - t0;

const port = await qmp.forwardedPort(8080);
const res = await httpGet(port, '/');
console.log(`\nGET http://127.0.0.1:${port}/ -> ${res.status} in ${res.ms.toFixed(0)} ms\n${res.body}`);
const rss = rssMiB(qemu.pid);

agent.send('poweroff');
const code = await exited;
const t1 = performance.now();
const gone = await Promise.race([qemu.exited.then(() => true), sleep(10000).then(() => false)]);
if (!gone) qemu.kill('SIGKILL');
await sleep(50);
const reallyGone = processGone(qemu.pid);
console.log(`QEMU ${qemu.pid}: app exit ${code}, powered off in ${(performance.now() - t1).toFixed(0)} ms, process gone: ${reallyGone}`);
console.log(`\nboot to agent: ${secs(tHello)} s, boot to ready: ${secs(tReady)} s, QEMU RSS at ready: ${rss} MiB (${opt.mem} MiB guest, ${opt.accel})`);
process.exit(res.status === 200 && gone && reallyGone ? 0 : 1);
