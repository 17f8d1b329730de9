// tests/node/tap_reporter.mjs - a node:test reporter for tests/t_node.sh:
// one line per top-level test, "PASS\tname", "FAIL\tname" followed by
// "DIAG\t..." lines (the assertion's message), "SKIP\tname\treason", and
// the runner's own diagnostics as DIAG.  The shell script numbers them as
// TAP, so every test of every file is one TAP line of t_node.sh.
export default async function* reporter(source) {
  for await (const ev of source) {
    const d = ev.data || {};
    if ((ev.type === 'test:pass' || ev.type === 'test:fail') && d.nesting === 0) {
      const name = String(d.name).replace(/[\t\n#]/g, ' ');
      if (d.skip !== undefined && d.skip !== false) {
        yield `SKIP\t${name}\t${typeof d.skip === 'string' ? d.skip : 'skipped'}\n`;
      } else if (ev.type === 'test:pass') {
        yield `PASS\t${name}\n`;
      } else {
        yield `FAIL\t${name}\n`;
        const e = d.details && d.details.error;
        const cause = e && e.cause ? e.cause : e;
        const text = cause ? (cause.stack || cause.message || String(cause)) : 'failed';
        for (const line of String(text).split('\n').slice(0, 25)) yield `DIAG\t${line}\n`;
      }
    } else if (ev.type === 'test:diagnostic' && d.nesting === 0 && !/^(tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) /.test(d.message)) {
      yield `DIAG\t${d.message}\n`;
    } else if (ev.type === 'test:stderr' || ev.type === 'test:stdout') {
      // output of the test file itself: keep it as a comment
      for (const line of String(d.message).trimEnd().split('\n')) yield `DIAG\t${line}\n`;
    }
  }
}
