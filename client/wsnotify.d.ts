/** A notification as the server sends it. */
export interface Envelope<T = unknown> {
  /** Stream id "<ms>-<seq>" with history on; an opaque string otherwise. */
  id: string;
  type: string;
  data: T;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** Always true: after close() no "close" event fires. */
  willReconnect: boolean;
  /** Milliseconds until the next attempt. */
  delay: number;
}

export interface TruncatedInfo {
  /** The id the client resumed from; history no longer holds everything after it. */
  since: string;
}

export type ConnectionState = "connecting" | "open" | "closed";

/** A URL, or a function returning one, called before every (re)connect. */
export type UrlSource = string | (() => string | Promise<string>);

/** The part of the WebSocket interface the client uses. */
export interface WebSocketLike {
  onopen: ((ev: any) => any) | null;
  /** ev.data: the frame's text. */
  onmessage: ((ev: any) => any) | null;
  onerror: ((ev: any) => any) | null;
  /** ev.code and ev.reason are passed on in the "close" event. */
  onclose: ((ev: any) => any) | null;
  close(code?: number, reason?: string): void;
}

export interface ConnectOptions {
  /** Starting stream id; the later of it and the stored id wins. Non-stream ids are ignored. */
  lastId?: string;
  /** When set and localStorage exists, lastId is loaded from and saved to localStorage[storageKey]. */
  storageKey?: string;
  /** Base of the exponential backoff, in ms (default 250). */
  minDelay?: number;
  /** Cap of the backoff, in ms (default 15000). */
  maxDelay?: number;
  /** WebSocket constructor (default globalThis.WebSocket). */
  WebSocket?: new (url: string) => WebSocketLike;
  /** Source of jitter in [0, 1) (default Math.random). */
  random?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: any) => void;
}

export interface ConnectionEvents {
  /** Once per id (stream ids above lastId; opaque ids not seen recently). */
  message: (env: Envelope) => void;
  open: () => void;
  close: (info: CloseInfo) => void;
  /** Reload state from the application backend. */
  truncated: (info: TruncatedInfo) => void;
  /** Socket error events, unparsable frames, url failures and listener exceptions. */
  error: (err: unknown) => void;
}

export interface Connection {
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof ConnectionEvents>(event: K, fn: ConnectionEvents[K]): () => void;
  off<K extends keyof ConnectionEvents>(event: K, fn: ConnectionEvents[K]): void;
  /** Greatest stream id delivered (or restored, or named by the server's hello before the first message), if any. */
  readonly lastId: string | undefined;
  /** "connecting" also covers the wait before a reconnect. */
  readonly state: ConnectionState;
  /** Stops for good: closes the socket, cancels reconnects, fires no further events. */
  close(): void;
}

/** Opens a resumable notification connection and keeps it open until close(). */
export function connect(url: UrlSource, options?: ConnectOptions): Connection;

/** Compares two stream ids numerically (ms, then seq): -1, 0 or 1. Throws TypeError for other ids. */
export function compareIds(a: string, b: string): number;
