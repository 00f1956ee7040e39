// The JavaScript API of tauri-plugin-tidegate: typed wrappers over `invoke`, one per
// command, with the events each job sends through its channel.

import { Channel, invoke } from '@tauri-apps/api/core'

/** What kind of error; stable, for code to branch on. */
export type ErrorKind =
  | 'invalidArgument'
  | 'unreachable'
  | 'authentication'
  | 'io'
  | 'cancelled'
  | 'notFound'

/** Every error a command rejects with, and every error in an event. */
export interface TidegateError {
  kind: ErrorKind
  message: string
}

/** A byte count: a number, or a string with a binary unit such as "64MiB". */
export type ByteSize = number | string

/** Options of `send`; each is optional and defaults as the `tidegate send` command does. */
export interface SendOptions {
  /** Memory budget (default 64 MiB). */
  memory?: ByteSize
  /** Chunk size (default 1 MiB). */
  chunkSize?: ByteSize
  /** Hashing threads (default: one per core). */
  threads?: number
  /** TCP connections per destination (default 4). */
  streams?: number
  /** The receiver's passphrase. Never echoed in an event or an error. */
  key?: string
  /** How long an unreachable destination is retried (default 60000). */
  retryForMs?: number
  /** Timeout of one connection attempt (default 10000). */
  connectTimeoutMs?: number
  /** Send symlinks as links (default: skip them). */
  links?: boolean
  /** List every file in the final report (default: only failures). */
  fileReports?: boolean
}

/** Options of `hash`. */
export interface HashOptions {
  memory?: ByteSize
  chunkSize?: ByteSize
  threads?: number
}

/** A path and why it failed. */
export interface Failure {
  path: string
  error: string
}

/** A destination that is not connected right now. */
export interface DestinationState {
  address: string
  state: 'unreachable' | 'dropped' | 'unknown'
  error: string | null
}

export interface FileSent {
  path: string
  bytes: number
  blake3: string
}

export interface DestinationResult {
  address: string
  filesDone: number
  failed: Failure[]
  bytes: number
  resumed: number
  resent: number
  reconnects: number
  restarts: number
  error: TidegateError | null
}

export interface TransferReport {
  success: boolean
  cancelled: boolean
  bytes: number
  elapsedMs: number
  sourceErrors: Failure[]
  destinations: DestinationResult[]
  files: FileSent[]
}

/** Events of `send`: `started`, then `progress` (at most ten a second), then `finished`. */
export type TransferEvent =
  | { event: 'started'; id: number; sources: string[]; destinations: string[] }
  | {
      event: 'progress'
      doneBytes: number
      totalBytes: number | null
      filesDone: number
      filesFailed: number
      bytesPerSecond: number
      etaSeconds: number | null
      elapsedMs: number
      currentFile: string | null
      destinations: DestinationState[]
    }
  | { event: 'finished'; report: TransferReport; error: TidegateError | null }

export interface HashedFile {
  path: string
  bytes: number
  blake3: string | null
  error: TidegateError | null
}

/** Events of `hash`: `started`, `progress` (at most ten a second), `finished`. */
export type HashEvent =
  | { event: 'started'; id: number }
  | {
      event: 'progress'
      doneBytes: number
      totalBytes: number | null
      filesDone: number
      elapsedMs: number
    }
  | { event: 'finished'; files: HashedFile[]; cancelled: boolean }

/** A connection a receiver refused. */
export interface Refusal {
  peer: string
  reason: string
}

export interface ReceivedFile {
  path: string
  bytes: number
}

/** Events of a receiver: `activity` (at most ten a second), then `stopped`. */
export type ServeEvent =
  | {
      event: 'activity'
      connections: number
      connected: string[]
      refused: Refusal[]
      received: ReceivedFile[]
      filesTotal: number
      bytesTotal: number
      unlisted: number
    }
  | { event: 'stopped'; error: TidegateError | null }

/** A running transfer, as `transfers()` lists it. */
export interface TransferInfo {
  id: number
  sources: string[]
  destinations: string[]
  doneBytes: number
  totalBytes: number | null
  state: 'running' | 'cancelling'
}

/** A started receiver. */
export interface Receiver {
  id: number
  address: string
  /** The code phrase the receiver made when it was given no key; show it to the user once. */
  codePhrase: string | null
}

function channel<T>(handler?: (event: T) => void): Channel<T> {
  const c = new Channel<T>()
  if (handler) c.onmessage = handler
  return c
}

/** Starts sending files or directories to `HOST:PORT` receivers; resolves to its id at once. */
export async function send(
  sources: string[],
  destinations: string[],
  options: SendOptions = {},
  onProgress?: (event: TransferEvent) => void
): Promise<number> {
  return await invoke<number>('plugin:tidegate|send', {
    sources,
    destinations,
    options,
    onProgress: channel(onProgress)
  })
}

/** Cancels a transfer or a hash job; its `finished` event follows. */
export async function cancel(id: number): Promise<void> {
  await invoke('plugin:tidegate|cancel', { id })
}

/** The running transfers. */
export async function transfers(): Promise<TransferInfo[]> {
  return await invoke<TransferInfo[]>('plugin:tidegate|transfers')
}

/** Hashes files (BLAKE3, as b3sum prints); resolves to their roots once done. */
export async function hash(
  paths: string[],
  onProgress?: (event: HashEvent) => void,
  options: HashOptions = {}
): Promise<HashedFile[]> {
  return await invoke<HashedFile[]>('plugin:tidegate|hash', {
    paths,
    options,
    onProgress: channel(onProgress)
  })
}

/**
 * Starts a receiver writing into `dir`; `listen` defaults to 127.0.0.1 on any free port.
 * Without `key` it makes a code phrase (in the result) that senders must give;
 * `insecureNoAuth` lets any sender in instead, still encrypted.
 */
export async function serveStart(
  dir: string,
  options: { listen?: string; key?: string; insecureNoAuth?: boolean } = {},
  onEvent?: (event: ServeEvent) => void
): Promise<Receiver> {
  return await invoke<Receiver>('plugin:tidegate|serve_start', {
    dir,
    listen: options.listen,
    key: options.key,
    insecureNoAuth: options.insecureNoAuth,
    onEvent: channel(onEvent)
  })
}

/** Stops a receiver gracefully; its `stopped` event follows. */
export async function serveStop(id: number): Promise<void> {
  await invoke('plugin:tidegate|serve_stop', { id })
}
