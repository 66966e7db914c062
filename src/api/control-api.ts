// The control API (fastify): registration routes and health, with every error turned into a response here.
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { ExpectationFailedError } from '../proxy/errors.ts';
import { answerClientError } from '../proxy/raw-errors.ts';
import type { ServiceSpec } from '../protocol/wire.ts';
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  CallerTokenRefusedError, CredentialsRequiredError, InvalidRequestError, InvalidServiceError, MalformedJsonError, RouteNotFoundError, TandemError, UnauthorizedError,
} from '../common/errors.ts';
import type { Registrar } from '../registration/registrar.ts';
import type { ConsulPermissionError } from '../consul/errors.ts';
import { credentials, setCredentials } from './credentials.ts';
import { openSse, type SseStream } from './sse.ts';
import { ajv, formatErrors, serviceSpecRef } from '../config/schemas.ts';
import type { ErrorObject } from 'ajv';

/** Extra route groups (the routing view, later features) plug in here without the API knowing them. */
export type RoutePlugin = (app: FastifyInstance) => void;

export interface ControlApiOptions {
  host: string;
  port: number;
  registrar: Registrar;
  logger: Logger;
  version: string;
  /** Health details for the sidecar's own check: keep it tiny, Consul shows it verbatim. */
  status: () => { consul: 'up' | 'down' | 'unknown' | 'forbidden'; outage: boolean; watched: number; proxy: string };
  /** When set, every route but `GET /v1/health` (with any query) needs `Authorization: Bearer <token>`. */
  token?: string | undefined;
  /**
   * The local agent enforces ACLs (the sidecar asks it once at start): every write (any method but GET and
   * HEAD) then needs the caller's own Consul token (`X-Consul-Token`) or a proven `api.token`.
   */
  aclsEnabled?: boolean;
  plugins?: readonly RoutePlugin[];
}

const idParams = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: 128 } },
} as const;

export class ControlApi {
  #o: ControlApiOptions;
  #app: FastifyInstance;

  constructor(opts: ControlApiOptions) {
    this.#o = opts;
    this.#app = Fastify({
      // Request logs are info-level: a warn-level child keeps them out (access logs belong to the proxy).
      loggerInstance: opts.logger.child({ component: 'control-api' }, { level: 'warn' }) as FastifyBaseLogger,
      forceCloseConnections: true,
      // Names and ids may be 128 characters, percent-encoded up to three times that: fastify's default (100) would cut them.
      routerOptions: { maxParamLength: 512 },
      // URL and parameter errors fastify raises before routing go through the same error mapping.
      frameworkErrors: (err, _req, reply) => {
        const e =
          err.code === 'FST_ERR_MAX_PARAM_LENGTH'
            ? new TandemError('TANDEM_ERR_URL_TOO_LONG', 414, 'a path parameter is too long')
            : new InvalidRequestError(err.code === 'FST_ERR_BAD_URL' ? 'the URL is not valid (bad percent-encoding?)' : err.message);
        // fastify types this reply generically: send the body as JSON text through the raw response.
        reply.hijack();
        reply.raw.writeHead(e.statusCode, { 'content-type': 'application/json; charset=utf-8', 'x-tandem-error': e.code });
        reply.raw.end(JSON.stringify(e.toBody()));
      },
      return503OnClosing: true,
      bodyLimit: 256 * 1024,
      // Parser errors: answered in our error shape, and never written into a response in progress
      // (an event stream, say) or after a response that closes the connection.
      clientErrorHandler: (err: NodeJS.ErrnoException, socket) => {
        if (!socket.writable) socket.destroy();
        else answerClientError(err, socket, () => new InvalidRequestError('malformed HTTP request'));
      },
    });
    // Any Expect but 100-continue: our error shape, not Node's bare 417.
    this.#app.server.on('checkExpectation', (_req: IncomingMessage, res: ServerResponse) => {
      const e = new ExpectationFailedError();
      const body = JSON.stringify(e.toBody());
      res.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), 'x-tandem-error': e.code });
      res.end(body);
    });
    this.#app.setValidatorCompiler(({ schema }) => ajv.compile(schema));
    this.#app.setErrorHandler((err, req, reply) => {
      let mapped = toTandemError(err as Error, (req.routeOptions.config as { bodyKind?: string }).bodyKind);
      // The write was made with the caller's own token: Consul refused the caller, not the sidecar.
      if (isConsulRefusal(mapped) && credentials(req).token !== undefined) mapped = new CallerTokenRefusedError(mapped.action, mapped.detail);
      if (mapped.statusCode >= 500) this.#o.logger.warn({ code: mapped.code, message: mapped.message }, 'control API error');
      void reply.code(mapped.statusCode).header('x-tandem-error', mapped.code).send(mapped.toBody());
    });
    this.#app.setNotFoundHandler((req, reply) => {
      const err = new RouteNotFoundError(req.method, req.url.split('?')[0] ?? '');
      void reply.code(404).header('x-tandem-error', err.code).send(err.toBody());
    });
    this.#authenticate(opts.token, opts.aclsEnabled === true);
    this.#routes();
    for (const plugin of opts.plugins ?? []) plugin(this.#app);
  }

  /**
   * The one place that decides whose credentials a request runs with. `api.token`, when configured,
   * guards every route but the health check. The caller's own Consul token, when sent, is what every
   * Consul write of the request uses (so a caller never gets more than its own token gives); without
   * one, the sidecar's token is used — refused for writes when the agent enforces ACLs and the caller
   * did not prove `api.token`, since that would lend the sidecar's token to any local process.
   */
  #authenticate(apiToken: string | undefined, aclsEnabled: boolean): void {
    const expected = apiToken === undefined ? undefined : createHash('sha256').update(apiToken).digest();
    this.#app.addHook('onRequest', async (req) => {
      if (req.method === 'GET' && (req.url === '/v1/health' || req.url.startsWith('/v1/health?'))) return;
      let proved = false;
      if (expected) {
        const got = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
        // Compare digests in constant time: the token's length and content must not leak through timing.
        if (!timingSafeEqual(createHash('sha256').update(got).digest(), expected)) throw new UnauthorizedError();
        proved = true;
      }
      const raw = req.headers['x-consul-token'];
      const token = (Array.isArray(raw) ? raw[0] : raw)?.trim();
      if (token) {
        setCredentials(req, { token });
        return;
      }
      // Reads (the GET streams included) and unknown routes (answered 404) need no Consul credential.
      const write = req.method !== 'GET' && req.method !== 'HEAD' && req.routeOptions.url !== undefined;
      if (aclsEnabled && write && !proved) throw new CredentialsRequiredError();
      setCredentials(req, {});
    });
  }

  /**
   * Whether a write Consul cannot take now may be kept and made later (with the sidecar's token): not
   * when ACLs are on and the caller sent its own token, which Consul has then never checked.
   */
  #mayDefer(req: FastifyRequest): boolean {
    return !(this.#o.aclsEnabled === true && credentials(req).token !== undefined);
  }

  /** For in-process tests (`inject`). */
  get app(): FastifyInstance {
    return this.#app;
  }

  async start(): Promise<{ host: string; port: number }> {
    await this.#app.listen({ host: this.#o.host, port: this.#o.port });
    const addr = this.#app.server.address();
    return { host: this.#o.host, port: typeof addr === 'object' && addr ? addr.port : this.#o.port };
  }

  async close(): Promise<void> {
    await this.#app.close();
  }

  #routes(): void {
    const app = this.#app;
    const registrar = this.#o.registrar;

    // For supervisors and load balancers: 503 `degraded` while Consul is unreachable or refuses the
    // sidecar's token (routing goes on from the last good view, but registrations and fresh views wait).
    // `?from=consul` is the sidecar's own Consul check, which only says whether it is alive: 200 while
    // it answers, 429 (Consul: warning) while Consul refuses its token — shown in the UI, and never
    // reaped by DeregisterCriticalServiceAfter, which a critical would be after a minute. The body is
    // what the UI shows as the check's output: keep it tiny.
    app.get('/v1/health', { schema: {} }, async (req, reply) => {
      const st = this.#o.status();
      const degraded = st.consul === 'down' || st.consul === 'forbidden' || st.outage;
      const forConsul = (req.query as { from?: unknown }).from === 'consul';
      const code = forConsul ? (st.consul === 'forbidden' ? 429 : 200) : degraded ? 503 : 200;
      return reply.code(code).send({ status: degraded ? 'degraded' : 'ok', version: this.#o.version, ...st });
    });

    app.get('/v1/services', { schema: {} }, async () => registrar.list());

    // `?liveness=true`: the app holds POST /v1/services/:id/liveness open (the SDK does), and the
    // registration goes a grace after that stream closes for good — from now, so an app that dies
    // before opening it leaves no zombie either.
    app.post<{ Body: ServiceSpec; Querystring: { liveness?: 'true' | 'false' } }>(
      '/v1/services',
      { schema: { body: serviceSpecRef, querystring: { type: 'object', additionalProperties: false, properties: { liveness: { enum: ['true', 'false'] } } } }, config: { bodyKind: 'service' } },
      async (req, reply) => {
        const { registration, pending } = await registrar.register(req.body, credentials(req), this.#mayDefer(req), { liveness: req.query.liveness === 'true' });
        return reply.code(pending ? 202 : 201).send({ ...registration, pending });
      },
    );

    // The liveness stream: open while the app lives (the kernel closes it when the process dies, however
    // it dies). A POST, so that under ACLs it needs the same credentials as the registration it can end.
    app.post<{ Params: { id: string } }>('/v1/services/:id/liveness', { schema: { params: idParams } }, async (req, reply) => {
      const release = await registrar.holdLiveness(req.params.id);
      let sse: SseStream;
      try {
        sse = openSse(req, reply);
      } catch (err) {
        release(); // 503: too many streams; the app retries within the grace
        throw err;
      }
      sse.onClose(release);
      sse.send('alive', { id: req.params.id, graceMs: registrar.livenessGraceMs });
    });

    app.delete<{ Params: { id: string } }>('/v1/services/:id', { schema: { params: idParams } }, async (req, reply) => {
      const { pending } = await registrar.deregister(req.params.id, credentials(req), this.#mayDefer(req));
      return reply.code(pending ? 202 : 200).send({ id: req.params.id, deregistered: !pending, pending });
    });

    app.put<{ Params: { id: string }; Body: { note?: string } | undefined }>(
      '/v1/services/:id/heartbeat',
      {
        schema: {
          params: idParams,
          body: { type: ['object', 'null'], additionalProperties: false, properties: { note: { type: 'string', maxLength: 4096 } } },
        },
      },
      async (req) => {
        await registrar.heartbeat(req.params.id, req.body?.note, credentials(req));
        return { id: req.params.id, status: 'passing' };
      },
    );
  }
}

/** Consul's 403 to a write (src/consul's ConsulPermissionError; routes may know its type, not import it). */
function isConsulRefusal(e: TandemError): e is ConsulPermissionError {
  const r = e as Partial<ConsulPermissionError>;
  return e.code === 'TANDEM_ERR_CONSUL_PERMISSION_DENIED' && e.statusCode === 502 && typeof r.action === 'string' && typeof r.detail === 'string';
}

/** The one mapping from anything thrown in a route to our catalogue. */
function toTandemError(err: FastifyError | Error, bodyKind: string | undefined): TandemError {
  if (err instanceof TandemError) return err;
  const fe = err as FastifyError & { validation?: ErrorObject[]; validationContext?: string };
  if (fe.validation) {
    const lines = formatErrors(fe.validation, fe.validationContext ?? 'request');
    return fe.validationContext === 'body' && bodyKind === 'service' ? new InvalidServiceError(lines.join('; ')) : new InvalidRequestError(lines.join('; '));
  }
  switch (fe.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new MalformedJsonError(fe.message);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new TandemError('TANDEM_ERR_UNSUPPORTED_MEDIA_TYPE', 415, 'send the body as application/json');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new TandemError('TANDEM_ERR_BODY_TOO_LARGE', 413, 'request body is too large');
  }
  if (err instanceof SyntaxError) return new MalformedJsonError(err.message);
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) return new InvalidRequestError(fe.message);
  return new TandemError('TANDEM_ERR_INTERNAL', 500, 'internal error', { cause: err });
}
