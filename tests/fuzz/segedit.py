#!/usr/bin/env python3
"""tests/fuzz/segedit.py - write a segment with chosen fields changed.

Used to build the regression inputs of tests/fuzz/attach/ and the
reproducers in tests/fuzz/known/ from a seed segment: one field changed,
everything else as km_create() wrote it.

  segedit.py SEED OUT EDIT...
  segedit.py --check FILE...     is each FILE a segment of this tree's layout?
  EDIT:  hdr.<field>=<value>                   the header (km__hdr)
         key.<k>.<field>=<value>               a key row (km__key)
         pool.<p>.<field>=<value>              a pool (km__pool)
         model.<p>.<m>.<field>=<value>         a model of a pool (km__model)
         member.<p>.<buf>.<i>.<field>=<value>  a member list entry
         mwin.<k>.<m>.<field>=<value>          per-model limit pairs of a key
         lease.<k>.<slot>.<field>=<value>      a lease slot
         busy.<k>.<slot>=<value>               a lease slot's in-flight flag
                                               byte (slot < the row's stride:
                                               the row's padding too)
         proc.<slot>.<field>=<value>           a process-table slot
         rdr.<slot>.<row>.<field>=<value>      a reader row
         uring.<slot>.<ring>.<field>=<value>   a usage ring's header
         uev.<slot>.<ring>.<i>.<field>=<value> a usage event
         bytes.<offset>=<hex>                  raw bytes at an offset
  <field> is a C member designator of the struct in shm/seg.h, e.g.
  max_inflight, emission_ns[3], view[1].n_keys, win[0].tat; the short forms
  emission_ns3, tau_ns0, limit2, burst1, mode0, view0_n_keys and
  pool.<p>.model<m>_name are accepted too.  Values are integers (0x..
  allowed; negative ones wrap) or, for char arrays, 'text' / fill:<byte>.

Nothing is hard-coded here: every offset, size and region address is
computed by a small C program compiled against this tree's headers
(shm/seg.h, src/layout.h, src/internal.h: the library's own accessors
km__keys, km__busy, km__urings, ..., and its km__layout and
km__layout_signature).  The same program checks that SEED is a segment of this
tree's layout (magic, KM_FORMAT_VERSION, hdr_size, layout signature and
every region offset the capacities imply) and refuses it otherwise, so a
seed left over from an older format fails loudly instead of being edited
at the wrong offsets.  Compiler: $SEGEDIT_CC, $FUZZ_CC or $CC, else cc,
gcc, clang or clang-14.
"""
import os, re, shutil, struct, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# region -> (number of indices, C expression of the element's address
# (a, b, c: the indices; the field designator is appended), bound checks)
REGIONS = {
    'hdr':    (0, '((km__hdr *)e->seg.base)', []),
    'key':    (1, '&km__keys(e)[a]', ['a < C.cap_keys']),
    'pool':   (1, '&km__pools(e)[a]', ['a < C.cap_pools']),
    'model':  (2, '&km__models(e, a)[b]', ['a < C.cap_pools', 'b < C.cap_models']),
    'member': (3, '&km__members(e, a, b)[c]', ['a < C.cap_pools', 'b < 2', 'c < C.cap_keys']),
    'mwin':   (2, '&km__mwins(e, a)[b]', ['a < C.cap_keys', 'b < C.cap_models']),
    'lease':  (2, '&km__leases(e, a)[b]', ['a < C.cap_keys', 'b < C.cap_inflight']),
    'busy':   (2, '&km__busy(e, a)[b]', ['a < C.cap_keys', 'b < km__busy_stride(C.cap_inflight)']),
    'proc':   (1, '&km__procs(&e->seg)[a]', ['a < C.cap_procs']),
    'rdr':    (2, '&km__rdrs(&e->seg, a)[b]', ['a < C.cap_procs', 'b < KM__RDR_PER_PROC']),
    'uring':  (2, 'km__urings(e, a, b)', ['C.cap_usage', 'a < C.cap_procs', 'b < KM__URINGS_PER_PROC']),
    'uev':    (3, '&((km__uev *)(void *)(km__urings(e, a, b) + 1))[c]',
               ['C.cap_usage', 'a < C.cap_procs', 'b < KM__URINGS_PER_PROC', 'c < km__uring_cap(e)']),
}

# short forms kept from the format-2 version of this script (derive.sh)
ARRAYS = ('emission_ns', 'tau_ns', 'limit', 'burst', 'mode', 'def_limit', 'def_burst',
          'def_mode', 'outcomes')
DESIGNATOR = re.compile(r'^[A-Za-z_]\w*(\[\d+\])*(\.[A-Za-z_]\w*(\[\d+\])*)*$')


def die(msg):
    sys.exit('segedit: ' + msg)


def designator(field):
    if field in ('busy0', 'busy1') or field.startswith('busy['):
        die("km__key has no busy words since format 3: use busy.<key>.<slot>=<0|1>")
    m = re.match(r'^(%s)(\d+)$' % '|'.join(ARRAYS), field)
    if m:
        return '%s[%s]' % (m.group(1), m.group(2))
    m = re.match(r'^view(\d+)_(\w+)$', field)
    if m:
        return 'view[%s].%s' % (m.group(1), m.group(2))
    if not DESIGNATOR.match(field):
        die('bad field ' + repr(field))
    return field


def parse(edit):
    """-> (region, [indices], designator or '', value) or ('bytes', off, hex)."""
    if '=' not in edit:
        die('edit without "=": ' + edit)
    lhs, value = edit.split('=', 1)
    head, _, rest = lhs.partition('.')
    if head == 'bytes':
        return ('bytes', int(rest, 0), value)
    m = re.match(r'^pool\.(\d+)\.model(\d+)_name$', lhs)  # old short form
    if m:
        return ('model', [int(m.group(1)), int(m.group(2))], 'name', value)
    if head not in REGIONS:
        die('unknown edit ' + edit)
    nidx = REGIONS[head][0]
    parts = rest.split('.', nidx) if rest else []
    if len(parts) < nidx or not all(p.isdigit() or p.startswith('0x') for p in parts[:nidx]):
        die('%s needs %d index(es): %s' % (head, nidx, edit))
    idx = [int(p, 0) for p in parts[:nidx]]
    field = parts[nidx] if len(parts) > nidx else ''
    if head == 'busy':
        if field:
            die('busy.<key>.<slot> takes no field: ' + edit)
    elif not field:
        die('no field: ' + edit)
    else:
        field = designator(field)
    return (head, idx, field, value)


def compiler():
    for v in ('SEGEDIT_CC', 'FUZZ_CC', 'CC'):
        if os.environ.get(v) and shutil.which(os.environ[v].split()[0]):
            return os.environ[v].split()
    for c in ('cc', 'gcc', 'clang', 'clang-14'):
        if shutil.which(c):
            return [c]
    die('no C compiler (set SEGEDIT_CC): the layout is computed by compiling shm/seg.h')


PROBE = r'''
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define KIND(x) _Generic((x), char *: "text", unsigned char *: "text", \
    uint8_t: "int", uint16_t: "int", uint32_t: "int", uint64_t: "int", \
    int32_t: "int", int64_t: "int", char: "int", default: "other")
#define NO(...) do { printf("ERR "); printf(__VA_ARGS__); printf("\n"); return 1; } while (0)

int main(int argc, char **argv)
{
    static km_env env;
    km_env *e = &env;
    km__hdr *h = &env.geom;
#define C (env.geom)
    uint64_t off[KM__OFF_N];
    FILE *f = fopen(argv[1], "rb");
    if (!f) NO("cannot open %%s", argv[1]);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (size < (long)sizeof *h || fread(h, sizeof *h, 1, f) != 1)
        NO("%%ld bytes: shorter than a header (%%zu)", size, sizeof *h);
    fclose(f);
    (void)argc;
    if (h->magic != KM__MAGIC) NO("not a KeyMesh segment (magic %%016llx)", (unsigned long long)h->magic);
    if (h->format != KM_FORMAT_VERSION)
        NO("format %%u, this tree writes format %%d (make fuzz-seeds)", h->format, KM_FORMAT_VERSION);
    if (h->hdr_size != sizeof(km__hdr) || h->layout_sig != km__layout_signature())
        NO("layout signature %%016llx, hdr_size %%u; this tree: %%016llx, %%zu (make fuzz-seeds)",
           (unsigned long long)h->layout_sig, h->hdr_size,
           (unsigned long long)km__layout_signature(), sizeof(km__hdr));
    if (km__layout(h->cap_keys, h->cap_pools, h->cap_procs, h->cap_inflight, h->cap_models,
                   h->cap_usage, off) != h->seg_size || (uint64_t)size < h->seg_size ||
        off[KM__OFF_POOLS] != h->off_pools || off[KM__OFF_MEMBERS] != h->off_members ||
        off[KM__OFF_MODELS] != h->off_models || off[KM__OFF_KEYS] != h->off_keys ||
        off[KM__OFF_MWIN] != h->off_mwin || off[KM__OFF_LEASES] != h->off_leases ||
        off[KM__OFF_BUSY] != h->off_busy || off[KM__OFF_PROCS] != h->off_procs ||
        off[KM__OFF_READERS] != h->off_readers || off[KM__OFF_USAGE] != h->off_usage)
        NO("capacities, offsets and size (%%llu, file %%ld) disagree with the layout",
           (unsigned long long)h->seg_size, size);
    env.seg.base = calloc(1, h->seg_size);
    if (!env.seg.base) NO("out of memory");
    env.seg.cap_procs = h->cap_procs; /* shm/'s geometry, as km_open takes it */
    env.seg.off_procs = h->off_procs;
    env.seg.off_readers = h->off_readers;
    printf("OK %%u %%llu\n", h->format, (unsigned long long)h->seg_size);
%(fields)s
    return 0;
}
'''

FIELD = r'''    {
        uint64_t a = %(a)s, b = %(b)s, c = %(c)s;
        (void)a; (void)b; (void)c;
        if (!(%(bounds)s)) NO("%(edit)s: index out of range (%(bounds_s)s)");
        printf("F %%td %%zu %%s\n", (char *)(%(lv)s) - (char *)env.seg.base, sizeof(%(x)s), KIND(%(x)s));
    }
'''


def probe(seed, targets):
    """Check SEED; return [(offset, size, kind)] for each (region, idx, field)."""
    fields = []
    for t, edit in targets:
        region, idx, field = t
        _, expr, bounds = REGIONS[region]
        idx = idx + [0] * (3 - len(idx))
        if region == 'busy':
            x = '*(%s)' % expr
        elif region == 'hdr':
            x = '%s->%s' % (expr, field)
        else:
            x = '(%s)->%s' % (expr, field)
        bs = ' && '.join(bounds) or '1'
        fields.append(FIELD % dict(a=idx[0], b=idx[1], c=idx[2], bounds=bs,
                                   bounds_s=bs.replace('"', "'"), edit=edit.replace('"', "'"),
                                   lv='&' + x, x=x))
    code = PROBE % dict(fields=''.join(fields))
    with tempfile.TemporaryDirectory(prefix='segedit-') as d:
        c, exe = os.path.join(d, 'probe.c'), os.path.join(d, 'probe')
        open(c, 'w').write(code)
        cmd = compiler() + ['-std=c11', '-D_GNU_SOURCE', '-w', '-I' + os.path.join(ROOT, 'include'),
                            '-I' + os.path.join(ROOT, 'shm'), '-I' + os.path.join(ROOT, 'src'),
                            '-o', exe, c]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            errs = [l for l in r.stderr.splitlines() if 'error' in l]
            die('cannot compute the layout (a field name wrong?):\n  ' + '\n  '.join(errs[:5] or [r.stderr]))
        r = subprocess.run([exe, seed], capture_output=True, text=True)
    lines = r.stdout.splitlines()
    if r.returncode or not lines or not lines[0].startswith('OK '):
        bad = [l[4:] for l in lines if l.startswith('ERR ')]
        die('%s: %s' % (seed, bad[0] if bad else 'probe failed: ' + r.stdout + r.stderr))
    out = []
    for l in lines[1:]:
        _, o, n, kind = l.split()
        out.append((int(o), int(n), kind))
    if len(out) != len(targets):
        die('probe answered %d fields for %d edits' % (len(out), len(targets)))
    return out


def put(b, off, size, kind, value, edit):
    if off < 0 or off + size > len(b):
        die('%s: outside the file' % edit)
    if kind == 'text':
        if value.startswith('fill:'):
            data = bytes([int(value[5:], 0)]) * size
        else:
            data = value.strip("'").encode()[:size]
            data = data + b'\0' * (size - len(data))
        b[off:off + size] = data
    elif kind == 'int':
        v = int(value, 0)
        if v < 0:
            v &= (1 << (8 * size)) - 1
        if v >> (8 * size):
            die('%s: %#x does not fit in %d bytes' % (edit, v, size))
        b[off:off + size] = v.to_bytes(size, 'little')
    else:
        die('%s: not an integer nor a char array (%d bytes): name one element' % (edit, size))


def check(files):
    bad = 0
    for f in files:
        try:
            probe(f, [])
            print('%s: ok' % f)
        except SystemExit as e:
            print(str(e.code))
            bad = 1
    return bad


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == '--check':
        sys.exit(check(sys.argv[2:]))
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    seed, out, edits = sys.argv[1], sys.argv[2], sys.argv[3:]
    parsed = [(parse(e), e) for e in edits]
    targets = [((p[0], p[1], p[2]), e) for p, e in parsed if p[0] != 'bytes']
    where = iter(probe(seed, targets))  # refuses a seed of another layout
    b = bytearray(open(seed, 'rb').read())
    for p, e in parsed:
        if p[0] == 'bytes':
            data = bytes.fromhex(p[2])
            if p[1] + len(data) > len(b):
                die('%s: outside the file' % e)
            b[p[1]:p[1] + len(data)] = data
        else:
            off, size, kind = next(where)
            put(b, off, size, kind, p[3], e)
    open(out, 'wb').write(b)


if __name__ == '__main__':
    main()
