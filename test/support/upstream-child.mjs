// A minimal upstream in its own process (so a test can kill -9 it): answers JSON with its port; /health for checks.
import { createServer } from 'node:http';

const port = Number(process.argv[2]);
const name = process.argv[3] ?? 'svc';
createServer((req, res) => {
  if (req.url === '/health') return void res.end('ok');
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ name, port, url: req.url }));
}).listen(port, '127.0.0.1', () => process.stdout.write('ready\n'));
