// A small graphql-transport-ws client: connection_init with the token, ping/pong, subscribe/next/error/complete,
// and reconnection with exponential backoff. Subscriptions survive reconnects: each one is re-sent with the
// variables its owner gives at that moment (so a feed can resume from the last id it has seen).

const PROTOCOL = "graphql-transport-ws";
// Close codes of the protocol that mean "this token will never be accepted": reconnecting would only repeat it.
const REJECTED = new Set([4401, 4403]);
const ACK_TIMEOUT_MS = 10000;

/**
 * States reported to onState: {state: "connecting"|"connected"|"reconnecting"|"rejected", attempt, delayMs}.
 */
export class GraphQLWsClient {
  /**
   * @param {string} url ws:// or wss:// URL of /graphql
   * @param {() => object} connectionParams payload of connection_init (read at every connect)
   * @param {(s: object) => void} onState connection state changes
   * @param {{baseDelayMs?: number, maxDelayMs?: number, pingEveryMs?: number, pongTimeoutMs?: number}} options
   *   backoff bounds, and how often to ping and how long to wait for the pong
   */
  constructor(url, connectionParams, onState, options = {}) {
    this.url = url;
    this.connectionParams = connectionParams;
    this.onState = onState;
    this.baseDelayMs = options.baseDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 15000;
    this.pingEveryMs = options.pingEveryMs ?? 15000;
    this.pongTimeoutMs = options.pongTimeoutMs ?? 10000;
    this.pongs = 0; // pongs received: shows the connection answers, not only that it is open
    this.subscriptions = new Map(); // id -> {query, variables(), sink, active}
    this.nextId = 1;
    this.attempt = 0;
    this.socket = null;
    this.acked = false;
    this.stopped = false;
    this.timers = {};
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  /** Close for good (logout or a rejected token); subscriptions are forgotten. */
  stop() {
    this.stopped = true;
    this.clearTimers();
    this.subscriptions.clear();
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.close(1000, "bye");
    }
  }

  /**
   * Subscribe; returns an unsubscribe function. `variables` is a function so that a resumed subscription can
   * pass the newest position (afterId). sink: {next(data), error(errors), complete()}.
   */
  subscribe(query, variables, sink) {
    const id = String(this.nextId++);
    this.subscriptions.set(id, { query, variables, sink });
    if (this.acked) this.sendSubscribe(id);
    return () => {
      if (!this.subscriptions.delete(id)) return;
      if (this.acked) this.send({ id, type: "complete" });
    };
  }

  connect() {
    this.clearTimers();
    this.acked = false;
    this.onState({ state: this.attempt === 0 ? "connecting" : "reconnecting", attempt: this.attempt, delayMs: 0 });
    let socket;
    try {
      socket = new WebSocket(this.url, PROTOCOL);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.send({ type: "connection_init", payload: this.connectionParams() });
      this.timers.ack = setTimeout(() => socket.close(4408, "ack timeout"), ACK_TIMEOUT_MS);
    };
    socket.onmessage = (event) => this.receive(socket, event.data);
    socket.onclose = (event) => {
      if (socket !== this.socket) return; // an old socket closing after a reconnect
      this.socket = null;
      this.acked = false;
      this.clearTimers();
      if (this.stopped) return;
      if (REJECTED.has(event.code)) {
        this.stopped = true;
        this.onState({ state: "rejected", attempt: this.attempt, delayMs: 0 });
        return;
      }
      this.scheduleReconnect();
    };
  }

  receive(socket, raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      socket.close(4400, "invalid message");
      return;
    }
    switch (message.type) {
      case "connection_ack":
        clearTimeout(this.timers.ack);
        this.acked = true;
        this.attempt = 0;
        this.onState({ state: "connected", attempt: 0, delayMs: 0 });
        for (const id of this.subscriptions.keys()) this.sendSubscribe(id);
        this.schedulePing();
        break;
      case "ping":
        this.send({ type: "pong", payload: message.payload });
        break;
      case "pong":
        this.pongs += 1;
        clearTimeout(this.timers.pong);
        this.schedulePing();
        break;
      case "next": {
        const sub = this.subscriptions.get(message.id);
        if (sub) sub.sink.next(message.payload);
        break;
      }
      case "error": {
        const sub = this.subscriptions.get(message.id);
        this.subscriptions.delete(message.id);
        if (sub) sub.sink.error(message.payload);
        break;
      }
      case "complete": {
        const sub = this.subscriptions.get(message.id);
        this.subscriptions.delete(message.id);
        if (sub) sub.sink.complete();
        break;
      }
      default:
        break;
    }
  }

  sendSubscribe(id) {
    const sub = this.subscriptions.get(id);
    if (!sub) return;
    this.send({ id, type: "subscribe", payload: { query: sub.query, variables: sub.variables() } });
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  // Our own pings find a connection that died without a close frame (a host gone, a NAT dropping it):
  // no pong in time means reconnect.
  schedulePing() {
    clearTimeout(this.timers.ping);
    this.timers.ping = setTimeout(() => {
      const socket = this.socket;
      this.send({ type: "ping" });
      this.timers.pong = setTimeout(() => socket && socket.close(4499, "no pong"), this.pongTimeoutMs);
    }, this.pingEveryMs);
  }

  scheduleReconnect() {
    this.attempt += 1;
    // Exponential backoff with jitter, so that many pages do not all return at the same instant.
    const ceiling = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (this.attempt - 1));
    const delayMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.onState({ state: "reconnecting", attempt: this.attempt, delayMs });
    this.timers.reconnect = setTimeout(() => this.connect(), delayMs);
  }

  clearTimers() {
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    this.timers = {};
  }
}
