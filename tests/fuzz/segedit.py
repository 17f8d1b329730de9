#!/usr/bin/env python3
"""tests/fuzz/segedit.py - write a segment with chosen fields changed.

Used to build the minimal reproducers in tests/fuzz/known/ and the
regression inputs of tests/fuzz/attach/ from a seed segment: one field
changed, everything else as km_create() wrote it.

  segedit.py SEED OUT EDIT...
  EDIT:  key.<i>.<field>=<value>      a key row (km__key)
         pool.<p>.<field>=<value>     a pool (km__pool)
         member.<p>.<buf>.<i>.<field>=<value>   a member list entry
         lease.<key>.<slot>.<field>=<value>     a lease slot
         proc.<slot>.<field>=<value>  a process-table slot
         bytes.<offset>=<hex>         raw bytes at an offset
Values are integers (0x.. allowed) or, for char arrays, 'text' / fill:<byte>.
Offsets follow shm/seg.h (the layout signature pins them).
"""
import struct, sys

HDR = dict(cap_keys=(32, 'I'), cap_pools=(36, 'I'), cap_procs=(40, 'I'),
           cap_inflight=(44, 'I'), n_pools=(48, 'I'), n_keys=(52, 'I'),
           off_pools=(56, 'Q'), off_members=(64, 'Q'), off_keys=(72, 'Q'),
           off_leases=(80, 'Q'), off_procs=(88, 'Q'), cap_models=(104, 'I'),
           off_models=(112, 'Q'), off_mwin=(120, 'Q'), off_readers=(136, 'Q'),
           pad0=(108, 'I'), pad1=(132, 'I'))
KEY = dict(busy0=(128, 'Q'), latency_ema_ns=(256, 'Q'), state=(320, 'I'), gen=(324, 'I'), cooldown_until=(328, 'Q'),
           updating=(352, 'I'), emission_ns0=(384, 'Q'), emission_ns3=(408, 'Q'),
           tau_ns0=(432, 'Q'), win_mask=(576, 'I'), weight=(580, 'I'), pool=(584, 'I'),
           max_inflight=(588, 'I'), mode0=(592, 'B'), secret_len=(600, 'I'),
           meta_len=(604, 'I'), min_tok_burst=(636, 'I'), id=(640, 64),
           consec_fail=(336, 'I'), consec_429=(340, 'I'),
           secret=(704, 256), meta=(960, 256))
KEY_SIZE = 1216
POOL = dict(name=(0, 64), strategy=(64, 'I'), cooldown_s=(68, 'I'), model_mode=(80, 'I'),
            n_models=(84, 'I'),
            cur=(256, 'I'), view0_n_keys=(264, 'I'), view1_n_keys=(288, 'I'))
POOL_SIZE = 512
MEMBER = dict(key=(0, 'I'), cum_weight=(4, 'I'), by_cost=(8, 'I'))
LEASE = dict(owner=(0, 'Q'), seq=(8, 'I'), tokens=(12, 'I'), key_gen=(24, 'I'),
             phase=(28, 'I'), model=(56, 'I'), res_mask=(60, 'I'))
PROC = dict(tag=(0, 'Q'), pid=(8, 'I'), start_time=(16, 'Q'))


def hdr(b, f):
    off, t = HDR[f]
    return struct.unpack_from('<' + t, b, off)[0]


def put(b, base, spec, value):
    off, t = spec
    if isinstance(t, int):  # char array
        if value.startswith('fill:'):
            data = bytes([int(value[5:], 0)]) * t
        else:
            data = value.strip("'").encode()[:t]
            data = data + b'\0' * (t - len(data))
        b[base + off:base + off + t] = data
    else:
        struct.pack_into('<' + t, b, base + off, int(value, 0))


def main():
    seed, out, edits = sys.argv[1], sys.argv[2], sys.argv[3:]
    b = bytearray(open(seed, 'rb').read())
    for e in edits:
        lhs, value = e.split('=', 1)
        p = lhs.split('.')
        if p[0] == 'key':
            put(b, hdr(b, 'off_keys') + int(p[1]) * KEY_SIZE, KEY[p[2]], value)
        elif p[0] == 'pool' and p[2].startswith('model'):  # pool.<p>.model<m>_name
            m = int(p[2][5:p[2].index('_')])
            base = hdr(b, 'off_models') + (int(p[1]) * hdr(b, 'cap_models') + m) * 320
            put(b, base, (0, 64), value)
        elif p[0] == 'pool':
            put(b, hdr(b, 'off_pools') + int(p[1]) * POOL_SIZE, POOL[p[2]], value)
        elif p[0] == 'member':
            pool, buf, i = int(p[1]), int(p[2]), int(p[3])
            base = hdr(b, 'off_members') + ((pool * 2 + buf) * hdr(b, 'cap_keys') + i) * 16
            put(b, base, MEMBER[p[4]], value)
        elif p[0] == 'lease':
            base = hdr(b, 'off_leases') + (int(p[1]) * hdr(b, 'cap_inflight') + int(p[2])) * 128
            put(b, base, LEASE[p[3]], value)
        elif p[0] == 'proc':
            put(b, hdr(b, 'off_procs') + int(p[1]) * 64, PROC[p[2]], value)
        elif p[0] == 'hdr':
            put(b, 0, HDR[p[1]], value)
        elif p[0] == 'bytes':
            off = int(p[1], 0)
            data = bytes.fromhex(value)
            b[off:off + len(data)] = data
        else:
            sys.exit('segedit: unknown edit ' + e)
    open(out, 'wb').write(b)


if __name__ == '__main__':
    main()
