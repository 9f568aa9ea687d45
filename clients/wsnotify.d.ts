// Types of wsnotify.js, the wsnotify client (docs/CLIENT.md). Hand-written; keep in step.

/** The wire contract this client speaks (streams, positions, resume, /poll, /sse). */
export declare const PROTOCOL_VERSION: 1;

export type TransportKind = "websocket" | "sse" | "poll";
export type ConnectionState = "connecting" | "connected" | "disconnected" | "closed";

/** Where the client is in one stream: `offset` is the last message it handed over. */
export interface Position {
  epoch: string;
  offset: number;
}
export interface StreamPosition extends Position {
  /** `user:{id}`, `room:{name}` or `broadcast` */
  stream: string;
}

/** Present on every delivery of a stream while the server keeps history (HISTORY_SIZE > 0). */
export interface Positioned {
  stream?: string;
  epoch?: string;
  offset?: number;
}
export interface ChatDelivery extends Positioned {
  type: "chat.delivery";
  room: string;
  user: string;
  text: string;
  id: string;
  /** Unix ms */
  ts: number;
}
export interface NotificationDelivery extends Positioned {
  type: "notification";
  /** The published text parsed as JSON, or the text itself. */
  data: unknown;
}
export interface BroadcastDelivery extends Positioned {
  type: "broadcast";
  data: unknown;
}
/** What `message` handlers get, the same whatever the transport. */
export type Delivery = ChatDelivery | NotificationDelivery | BroadcastDelivery;

export interface RoomJoined {
  type: "room.joined";
  room: string;
  /** The whole roster: replace the room's member set with it. */
  users: string[];
}
export interface RoomLeft {
  type: "room.left";
  room: string;
}
export interface PresenceChange {
  type: "presence.join" | "presence.leave";
  room: string;
  user: string;
  ts: number;
}
/** WebSocket only: SSE and /poll carry no presence. */
export type PresenceEvent = RoomJoined | RoomLeft | PresenceChange;

export interface StateEvent {
  state: ConnectionState;
  transport: TransportKind;
  /** `disconnected`: ms until the next attempt */
  delay?: number;
  /** `disconnected`: the close code (WebSocket), 1006 for a failed SSE, 0 for a failed poll */
  code?: number;
}

export type RecoveryReason =
  | "epoch_changed"
  | "too_old"
  | "limit"
  | "unavailable"
  | "invalid_cursor"
  /** client-side: the server started a stream afresh past the position the client asked to resume */
  | "not_resumed"
  | (string & {});

/** The outcome of resuming one stream on a new connection. recovered:false: messages were
 * missed and will not be replayed; refetch that stream's state. */
export interface RecoveredEvent extends StreamPosition {
  recovered: boolean;
  reason?: RecoveryReason;
  transport: TransportKind;
}

export interface ClientError {
  /** A server `system.error` code (`not_in_room`, `invalid_cursor`, …), an HTTP refusal
   * (`unauthorized`, `refused`, or the body's `code`), `closed` (a hard close code),
   * `token` (getToken threw) or `transport` (a transport could not be created). */
  code: string;
  message: string;
  /** `system.error` only */
  type?: "system.error";
  /** HTTP status of a refusal */
  status?: number;
  /** close code, for `closed` */
  close?: number;
}

export interface ClientEvents {
  message: Delivery;
  presence: PresenceEvent;
  state: StateEvent;
  recovered: RecoveredEvent;
  error: ClientError;
}

/** The little the client needs of a WebSocket implementation (the browser's, Node's `ws`). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => object;
export type EventSourceConstructor = new (url: string) => object;
export type FetchFunction = (
  url: string,
  init: { headers: Record<string, string>; signal?: AbortSignal },
) => Promise<{ ok: boolean; status: number; json(): Promise<any> }>;

export interface ClientOptions {
  /** Base http(s) URL of the server. Default: the page's origin. */
  url?: string | URL;
  /** `?user=` on an open server (ignored by a server that requires a token). */
  user?: string;
  /** A JWT. Sent as the `bearer` subprotocol, `Authorization: Bearer` (poll) or `?token=` (SSE). */
  token?: string;
  /** Called before the token's `exp`, after a 401, and first if there is no `token`. */
  getToken?: () => string | Promise<string>;
  /** Rooms to join from the start. */
  rooms?: Iterable<string>;
  /** Order of preference. Default ["websocket", "sse", "poll"]; kinds whose constructor is missing are skipped. */
  transports?: TransportKind[];
  /** Positions to resume from (a saved `positions()`, or a since value, e.g. `next` of a server-side /poll). */
  since?: string | Record<string, Position>;
  WebSocket?: WebSocketConstructor;
  EventSource?: EventSourceConstructor;
  fetch?: FetchFunction;
  /** ms without any frame before the connection is presumed dead; 0 disables. Default 60000. */
  pingTimeout?: number;
  /** Backoff bounds in ms (full jitter). Default 500 and 30000. */
  minBackoff?: number;
  maxBackoff?: number;
  /** ms a connection must last before the backoff starts again from minBackoff. Default 10000. */
  stableAfter?: number;
  /** Failed attempts on a transport before the next one is tried. Default 2. */
  failuresBeforeFallback?: number;
  /** Mean ms between background tries of the preferred transport while on a fallback. Default 30000. */
  probeInterval?: number;
}

export declare class Client {
  constructor(options?: ClientOptions);
  readonly state: ConnectionState;
  /** The transport in use, or the one the next attempt will use. */
  readonly transport: TransportKind;
  readonly token: string | undefined;
  readonly rooms: ReadonlySet<string>;
  connect(): this;
  close(): this;
  /** Throws a TypeError for a name the server would refuse (1 to 128 of A-Z a-z 0-9 _ - . : @). */
  subscribe(room: string): this;
  unsubscribe(room: string): this;
  /** false unless a WebSocket is open: SSE and poll only receive. */
  send(room: string, text: string): boolean;
  positions(): Record<string, Position>;
  on<K extends keyof ClientEvents>(event: K, fn: (event: ClientEvents[K]) => void): this;
  off<K extends keyof ClientEvents>(event: K, fn: (event: ClientEvents[K]) => void): this;
}
export default Client;

export declare function encodeSince(list: readonly StreamPosition[]): string;
/** Throws a SyntaxError on a malformed value. */
export declare function parseSince(since: string): StreamPosition[];
export declare function backoff(attempt: number, min: number, max: number): number;
/** The unverified claims of a JWT ({} if it cannot be read). */
export declare function claims(token: string): { sub?: string; exp?: number; [claim: string]: unknown };
