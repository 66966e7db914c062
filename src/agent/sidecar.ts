// The composition root: builds every part of the sidecar from the frozen config and owns their start/close order.
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import type { ServiceSpec } from '../sdk/wire.ts';
import { parseListen, type FrozenConfig } from './config.ts';
import { ConsulClient } from './consul-client.ts';
import { ControlApi } from './control-api.ts';
import { createLogger } from './logger.ts';
import { Registrar } from './registrar.ts';
import { StateStore } from './state-store.ts';
import { TANDEM_VERSION } from './version.ts';

export interface SidecarOptions {
  config: FrozenConfig;
  /** Defaults to a pino logger at config.log.level on stderr. */
  logger?: Logger;
}

export interface SidecarAddresses {
  api: string;
}

export class Sidecar {
  readonly config: FrozenConfig;
  readonly logger: Logger;
  #consul: ConsulClient;
  #store: StateStore;
  #registrar: Registrar | undefined;
  #api: ControlApi | undefined;
  #addresses: SidecarAddresses | undefined;
  #closing: Promise<void> | undefined;

  constructor(opts: SidecarOptions) {
    this.config = opts.config;
    this.logger = opts.logger ?? createLogger(opts.config.log.level);
    this.#consul = new ConsulClient({
      address: this.config.consul.address,
      token: this.config.consul.token,
      datacenter: this.config.consul.datacenter,
      requestTimeoutMs: this.config.consul.requestTimeoutMs,
    });
    this.#store = new StateStore(this.config.stateDir);
  }

  get addresses(): SidecarAddresses {
    if (!this.#addresses) throw new Error('sidecar not started');
    return this.#addresses;
  }

  async start(): Promise<SidecarAddresses> {
    const c = this.config;
    await this.#store.start();
    const apiListen = parseListen(c.api.listen);
    // The sidecar's own service needs the API's real port (it may be 0 = any): the API listens
    // first, and the registrar adds that service when it starts.
    const registrar = new Registrar({
      consul: this.#consul,
      store: this.#store,
      logger: this.logger,
      nodeName: c.node.name,
      advertiseAddress: c.node.advertiseAddress,
      syncIntervalMs: c.registration.syncIntervalMs,
      drainMs: c.registration.drainMs,
      checkIntervalMs: c.registration.checkIntervalMs,
      checkTimeoutMs: c.registration.checkTimeoutMs,
      ttlMs: c.registration.ttlMs,
      configServices: c.services as ServiceSpec[],
    });
    this.#registrar = registrar;
    const api = new ControlApi({
      host: apiListen.host,
      port: apiListen.port,
      logger: this.logger,
      version: TANDEM_VERSION,
      registrar,
      status: () => ({ consul: registrar.consulReachable === undefined ? 'unknown' : registrar.consulReachable ? 'up' : 'down' }),
    });
    const { port: apiPort } = await api.start();
    this.#api = api;
    const sidecarId = `tandem-${c.node.name}-${apiPort}`;
    const wildcard = apiListen.host === '0.0.0.0' || apiListen.host === '::';
    const sidecarService: ServiceSpec = {
      name: 'tandem',
      id: sidecarId,
      version: TANDEM_VERSION,
      port: apiPort,
      tags: ['tandem-sidecar'],
      meta: { api: `${apiListen.host}:${apiPort}`, proxy: c.proxy.listen },
      check: { kind: 'http', path: '/v1/health' },
      // A sidecar listening on one address is checked there; on a wildcard, at the advertised address.
      ...(wildcard || isIP(apiListen.host) === 0 ? {} : { address: apiListen.host }),
    };
    await registrar.start(sidecarService);
    this.#addresses = { api: `http://${apiListen.host.includes(':') ? `[${apiListen.host}]` : apiListen.host}:${apiPort}` };
    this.logger.info({ api: this.#addresses.api, consul: this.#consul.address, node: c.node.name, version: TANDEM_VERSION }, 'tandem sidecar started');
    return this.#addresses;
  }

  /** Ordered shutdown: stop taking API calls, deregister everything (with drain), release Consul. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#registrar?.close();
      await this.#api?.close();
      this.#consul.close();
      this.logger.info('tandem sidecar stopped');
      this.logger.flush();
    })();
    return this.#closing;
  }
}
