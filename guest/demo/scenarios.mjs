// Agent behaviour checks: each scenario builds a root disk around a small
// bootstrap, boots it and asserts on the agent's frames.
//   node scenarios.mjs --kernel K --initrd I --dir D [name...]
// MICROVMS_AGENT should name the agent binary the initramfs was built with.
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname } from 'node:path';
import assert from 'node:assert/strict';
import { qemuArgs, startQemu, Qmp, AgentChannel, sleep, processGone } from './qemu.mjs';

const guestDir = dirname(dirname(fileURLToPath(import.meta.url)));
const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: { kernel: { type: 'string' }, initrd: { type: 'string' }, dir: { type: 'string' } },
});

async function run(name, { bootstrap, build = [], connectAfterMs = 0, drive }) {
  const dir = `${opt.dir}/${name}`;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(`${dir}/app`, { recursive: true });
  if (bootstrap !== undefined) {
    writeFileSync(`${dir}/app/bootstrap`, `#!/bin/sh\n${bootstrap}\n`);
    chmodSync(`${dir}/app/bootstrap`, 0o755);
  }
  execFileSync(`${guestDir}/rootfs/build-busybox-rootfs.sh`, [`${dir}/root.ext4`, `${dir}/app`, '--free-mb', '8', ...build], { stdio: 'ignore' });
  const qemu = startQemu(qemuArgs({ kernel: opt.kernel, initrd: opt.initrd, rootfs: `${dir}/root.ext4`, dir, memMiB: 128 }));
  const qmp = await Qmp.connect(`${dir}/qmp.sock`);
  if (connectAfterMs) await sleep(connectAfterMs);
  const agent = await AgentChannel.connect(`${dir}/agent.sock`);
  const frames = [];
  agent.on('frame', (f) => frames.push(f));
  const wait = (kind, ms = 30000) => agent.waitFor(kind, ms);
  try {
    await drive({ agent, qmp, frames, wait, reconnect: () => AgentChannel.connect(`${dir}/agent.sock`) });
    const exited = await Promise.race([qemu.exited.then(() => true), sleep(8000).then(() => false)]);
    assert.ok(exited, 'QEMU did not power off');
    assert.ok(processGone(qemu.pid));
    console.log(`ok   ${name}`);
  } catch (err) {
    console.log(`FAIL ${name}: ${err.message}\n     frames: ${JSON.stringify(frames.map((f) => `${f.kind} ${f.payload}`))}`);
    process.exitCode = 1;
    qemu.kill('SIGKILL');
  }
  await qemu.exited;
  rmSync(`${dir}/root.ext4`, { force: true });
}

const out = (frames, kind = 'stdout') => frames.filter((f) => f.kind === kind).map((f) => f.payload);

const scenarios = {
  'exit-code-and-streams': {
    bootstrap: `echo out; echo err >&2; printf 'no newline'; exit 3`,
    build: ['--ready-port', '0'],
    async drive({ frames, wait }) {
      assert.equal(await wait('exit'), '3');
      assert.deepEqual(out(frames), ['out', 'no newline']);
      assert.deepEqual(out(frames, 'stderr'), ['err']);
    },
  },
  'missing-bootstrap': {
    async drive({ frames, wait }) {
      assert.equal(await wait('exit'), '127');
      assert.match(out(frames, 'stderr').join(), /cannot execute \/var\/task\/bootstrap: No such file/);
    },
  },
  'runs-as-root-when-configured': {
    bootstrap: 'id -u; id -g',
    build: ['--user', 'root', '--ready-port', '0'],
    async drive({ frames, wait }) {
      assert.equal(await wait('exit'), '0');
      assert.deepEqual(out(frames), ['0', '0']);
    },
  },
  'unprivileged-by-default': {
    bootstrap: 'id -u; id -g; touch /var/task/x 2>/dev/null || echo read-only-task; touch /tmp/x && echo tmp-ok',
    build: ['--ready-port', '0'],
    async drive({ frames, wait }) {
      assert.equal(await wait('exit'), '0');
      assert.deepEqual(out(frames), ['1000', '1000', 'read-only-task', 'tmp-ok']);
    },
  },
  'bad-config-is-reported': {
    bootstrap: 'exit 0',
    build: ['--ready-port', 'eighty'],
    async drive({ wait }) {
      assert.match(await wait('error'), /agent.conf:\d+: ready_port: ready_port needs a port number/);
    },
  },
  'escaping-env-and-argv': {
    bootstrap: `printf '%s|%s|%s\\n' "$WEIRD" "$1" "$2"; printf 'ctl\\001x\\n'`,
    build: ['--env', 'WEIRD=a\\b\tc\nd', '--arg', '/var/task/bootstrap', '--arg', 'two words', '--arg', '', '--ready-port', '0'],
    async drive({ frames, wait }) {
      assert.equal(await wait('exit'), '0');
      assert.deepEqual(out(frames), ['a\\b\tc', 'd|two words|', 'ctl\x01x']);
    },
  },
  'late-host-and-reconnect': {
    // Output produced while no host is connected is buffered, then delivered.
    bootstrap: 'for i in 1 2 3 4 5 6; do echo tick $i; sleep 1; done',
    build: ['--ready-port', '0'],
    connectAfterMs: 4000,
    async drive({ agent, reconnect, wait }) {
      await wait('stdout');
      agent.close();
      await sleep(2500);
      const again = await reconnect();
      const got = [];
      again.on('frame', (f) => got.push(f));
      await again.waitFor('exit', 15000);
      assert.ok(got.some((f) => f.kind === 'stdout' && f.payload === 'tick 6'), JSON.stringify(got));
    },
  },
  'output-flood-keeps-control-frames': {
    // The host stops reading: the agent's buffer fills, output is dropped and
    // counted, but "exit" still arrives once the host reads again.
    bootstrap: `head -c 3000000 /dev/zero | tr '\\0' x | fold -w 1000; sleep 12; exit 5`,
    build: ['--ready-port', '0'],
    async drive({ agent, frames, wait }) {
      agent.socket.pause();
      await sleep(9000);
      agent.socket.resume();
      assert.equal(await wait('exit'), '5');
      const notes = frames.filter((f) => f.kind === 'dropped').map((f) => Number(f.payload));
      const dropped = notes.reduce((a, b) => a + b, 0);
      const lines = out(frames).length;
      assert.ok(notes.length >= 1 && notes.length <= 3, `dropped notes: ${notes}`);
      assert.ok(lines > 500 && lines + dropped === 3000, `${lines} lines + ${dropped} dropped`);
    },
  },
  'orphans-are-reaped-and-killed': {
    bootstrap: '(sleep 1000 &) ; sh -c "sleep 1000" & echo started; sleep 1; exit 0',
    build: ['--ready-port', '0'],
    async drive({ wait }) {
      assert.equal(await wait('exit'), '0');
    },
  },
  'long-lines-are-split': {
    bootstrap: `head -c 40000 /dev/zero | tr '\\0' a; echo`,
    build: ['--ready-port', '0'],
    async drive({ frames, wait }) {
      assert.equal(await wait('exit'), '0');
      assert.deepEqual(out(frames).map((l) => l.length), [16384, 16384, 7232]);
    },
  },
  'poweroff-escalates-to-sigkill': {
    bootstrap: `trap '' TERM; httpd -f -p 8080 -h /tmp & while :; do sleep 1; done`,
    async drive({ agent, wait }) {
      await wait('ready');
      const t0 = performance.now();
      agent.send('poweroff');
      assert.equal(await wait('exit'), '137');
      assert.ok(performance.now() - t0 >= 1900, 'SIGKILL came before the grace period');
    },
  },
};

for (const name of positionals.length ? positionals : Object.keys(scenarios)) {
  await run(name, scenarios[name]);
}
