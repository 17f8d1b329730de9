// tests/node/mock_provider.mjs - an LLM provider for test_fetch.mjs, on
// 127.0.0.1 in the test's own process, answering as each provider does:
//   POST /v1/chat/completions                OpenAI (Authorization: Bearer)
//   POST /v1/messages                        Anthropic (x-api-key)
//   POST /v1beta/models/M:generateContent    Gemini (x-goog-api-key)
//   anything else                            200 {} (api-key, or a custom header)
// Every request is recorded ({method, path, key, headers, body}; key: the
// credential of whichever header carried it).  mock.plan = (req, n) =>
// {status, headers, body, delayMs} | undefined (the default answer) decides
// the n-th answer (0-based).  Successes carry OpenAI's x-ratelimit-* or
// Anthropic's anthropic-ratelimit-* headers.
import http from 'node:http';

function keyOf(h) {
  const a = h.authorization || '';
  if (a.startsWith('Bearer ')) return a.slice(7);
  return h['x-api-key'] || h['x-goog-api-key'] || h['api-key'] || h['x-custom-key'] || '';
}

function defaultAnswer(req) {
  if (req.path === '/v1/chat/completions') {
    const body = JSON.parse(req.body || '{}');
    return {
      status: 200,
      headers: { 'x-ratelimit-limit-requests': '500', 'x-ratelimit-remaining-requests': '499', 'x-ratelimit-reset-requests': '120ms' },
      body: {
        id: 'chatcmpl-1', object: 'chat.completion', created: 1, model: body.model || 'gpt-test',
        choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 },
      },
    };
  }
  if (req.path === '/v1/messages') {
    const body = JSON.parse(req.body || '{}');
    return {
      status: 200,
      headers: { 'anthropic-ratelimit-requests-limit': '50', 'anthropic-ratelimit-requests-remaining': '49' },
      body: {
        id: 'msg_1', type: 'message', role: 'assistant', model: body.model || 'claude-test',
        content: [{ type: 'text', text: 'ok' }], stop_reason: 'end_turn', stop_sequence: null,
        usage: { input_tokens: 10, output_tokens: 5 },
      },
    };
  }
  return { status: 200, body: {} };
}

export async function startMock() {
  const mock = { requests: [], plan: null, port: 0, base: '' };
  const server = http.createServer((rq, rs) => {
    let body = '';
    rq.setEncoding('utf8');
    rq.on('data', (d) => { body += d; });
    rq.on('end', () => {
      const req = { method: rq.method, path: rq.url.split('?')[0], key: keyOf(rq.headers), headers: rq.headers, body };
      const n = mock.requests.length;
      mock.requests.push(req);
      const a = (mock.plan && mock.plan(req, n)) || defaultAnswer(req);
      const send = () => {
        const data = typeof a.body === 'string' ? a.body : JSON.stringify(a.body ?? {});
        rs.writeHead(a.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), ...(a.headers || {}) });
        rs.end(data);
      };
      if (a.delayMs) setTimeout(send, a.delayMs); else send();
    });
  });
  server.keepAliveTimeout = 1000;
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  mock.port = server.address().port;
  mock.base = `http://127.0.0.1:${mock.port}`;
  mock.close = () => new Promise((r) => { server.closeAllConnections(); server.close(r); });
  mock.keys = () => mock.requests.map((r) => r.key);
  return mock;
}
