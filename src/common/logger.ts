// Builds the process's one structured JSON logger (pino on stderr); tokens are redacted wherever they appear.
import { destination, pino, type Logger } from 'pino';

export function createLogger(level: string): Logger {
  return pino(
    {
      level,
      base: { name: 'tandem' },
      redact: { paths: ['token', '*.token', 'consul.token', 'headers["x-consul-token"]', 'headers.authorization'], censor: '[redacted]' },
    },
    destination({ fd: 2, sync: false }),
  );
}
