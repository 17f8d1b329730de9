// tests/node/child.mjs - another process on the same segment, driven by
// the tests through stdin, one command a line, one answer a line:
//   open SEG POOL   -> "open"            take   -> "held KEYID" | "none"
//   release         -> "released MS"     (km_now_ns in ms, just before km_release)
//   wait MS         -> "got KEYID" | "err CODE"   (pool.acquire({timeout: MS}))
//   exit            -> process.exit(0) with any lease still out (the
//                      binding's exit hook detaches: abandoned)
import readline from 'node:readline';
import { km, N } from './helpers.mjs';

let pool = null;
const leases = [];
const rl = readline.createInterface({ input: process.stdin });
const say = (s) => process.stdout.write(s + '\n');
rl.on('line', async (line) => {
  const [cmd, ...a] = line.trim().split(/\s+/);
  try {
    if (cmd === 'open') { pool = km.Pool.open(a[0], a[1]); say('open'); }
    else if (cmd === 'take') { const l = pool.tryAcquire(); if (l) leases.push(l); say(l ? `held ${l.keyId}` : 'none'); }
    else if (cmd === 'release') { const l = leases.shift(); const t = N.nowMs(); pool.release(l); say(`released ${t}`); }
    else if (cmd === 'wait') {
      try { const l = await pool.acquire({ timeout: Number(a[0]) }); leases.push(l); say(`got ${l.keyId}`); }
      catch (e) { say(`err ${e.code}`); }
    }
    else if (cmd === 'exit') process.exit(0);
    else say(`unknown ${cmd}`);
  } catch (e) {
    say(`error ${e.code} ${e.message}`);
  }
});
rl.on('close', () => process.exit(0));
