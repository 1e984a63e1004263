// Image staging between hosts (issue 9): an image's files (vmlinuz,
// initrd.img, image.json) travel in fixed-size chunks into a host's
// content-addressed image store, and down a tree of agents. A warm-launch
// snapshot (vmstate, snapshot.json; issue 11) travels the same way into the
// snapshots beside the store, named by its key: the manifest says which kind
// it is, under the same signature. Restoring it feeds QEMU a device-state
// stream the cluster's owner made; the owner, who holds the CA's key, can
// already send such a stream to any incoming migration of the cluster, so the
// agent's exposure does not grow.
//
// - What may arrive is fixed by a manifest (per file: size, sha256 of every
//   chunk and of the whole file) that the controller signs with the cluster
//   CA's key (ECDSA P-256, domain-separated from certificate signatures). The
//   image id names a build recipe, not bytes, so the id alone cannot bind the
//   content: the signature does, and every agent checks it with the CA
//   certificate it already pins (the last certificate of its own TLS chain).
//   A forwarding agent cannot alter what its children accept.
// - Each chunk's sha256 is checked on arrival; a chunk that does not match is
//   refused and nothing of it is written. Verified chunks go into a hidden
//   partial directory (<store>/.staging/<id>/image, never a 64-hex name); when
//   every chunk is there, each whole file is hashed again, image.json must
//   name the image, and the directory is renamed into the store in one step.
// - Resumable: the receiver answers every start with what it has verified
//   (a bitmap per file), so a sender sends only the rest; after an agent
//   restart the partial files are re-hashed chunk by chunk.
// - Skipped where the host has the image already (its files are checked
//   against the manifest before it forwards them).
// - Pipelined: an agent forwards each verified chunk to its children while it
//   still receives, over one TLS connection per child with the cluster's CA
//   pinned (client.ts connectPinned). Chunks follow each other on that one
//   stream, in order: a chunk is whole at the child one chunk's wire time after
//   it was whole here (with several requests in flight on parallel connections,
//   every chunk shared the link with the others and arrived that many times
//   later, at every hop of a chain).
// Routes (bearer token as every /v1 route): POST /v1/staging/<id> (JSON:
// signed manifest and the subtree to forward to), GET /v1/staging/<id>
// (status), GET /v1/staging/<id>/stream upgraded to STREAM_PROTOCOL (frames
// of <u32 file><u32 chunk><the chunk's bytes>; the receiver answers one JSON
// line per chunk, or one with the refusal before it closes), and
// PUT /v1/staging/<id>/<file index>/<chunk index> (one raw chunk).
import * as crypto from "crypto";
import * as fs from "fs";
import * as http from "http";
import type * as net from "net";
import * as path from "path";
import type { Duplex } from "stream";
import { connectPinned, parseAgentUrl } from "./client";
import { IMAGE_ID_PATTERN, ImageStore, snapshotRootOf } from "./image-store";
import { AgentRefusal } from "./protocol";

/** The files of an image that are staged, in this order; image.json last, as when an image is built. */
export const STAGED_FILES = ["vmlinuz", "initrd.img", "image.json"] as const;
/** The files of a warm-launch snapshot (drivers/qemu-warm.ts), in this order; snapshot.json last: its presence marks a snapshot complete. */
export const SNAPSHOT_STAGED_FILES = ["vmstate", "snapshot.json"] as const;
export type StagedFile = (typeof STAGED_FILES)[number] | (typeof SNAPSHOT_STAGED_FILES)[number];
/** What is staged: an image (into the store, by id) or a warm-launch snapshot (beside it, by key). */
export type StagedKind = "image" | "snapshot";

export function stagedFiles(kind: StagedKind): readonly StagedFile[] {
  return kind === "snapshot" ? SNAPSHOT_STAGED_FILES : STAGED_FILES;
}

/** The file written last, which names what it belongs to: image.json's id, snapshot.json's key. */
function metaFile(kind: StagedKind): { file: StagedFile; field: "id" | "key" } {
  return kind === "snapshot" ? { file: "snapshot.json", field: "key" } : { file: "image.json", field: "id" };
}

export function kindOf(m: StagingManifest): StagedKind {
  return m.kind ?? "image";
}

export const DEFAULT_CHUNK_BYTES = 1024 * 1024;
/** Prefix of every signed manifest: a manifest signature can never pass for another use of the CA's key (DER starts with 0x30). */
const MANIFEST_DOMAIN = "vse-staging-manifest/1\n";

export const STAGING_LIMITS = {
  minChunkBytes: 64 * 1024,
  maxChunkBytes: 8 * 1024 * 1024,
  /** Per file; a VSE image's kernel and initramfs are tens of MiB. */
  maxFileBytes: 4 * 1024 * 1024 * 1024,
  /** The start request: the manifest (~67 bytes a chunk) and the subtree. */
  maxStartBodyBytes: 1024 * 1024,
  /** Agents in one staging request's subtree, and its depth. */
  maxSubtreeAgents: 4096,
  maxSubtreeDepth: 64,
  maxChildren: 64,
  /** Images being staged at once on one agent. */
  maxSessions: 4,
};

/**
 * How a sender behaves on a link: a request, or a stream with chunks not yet
 * answered, idle this long is abandoned and the link resumed; no progress at
 * all for stallMs gives up.
 */
export const SENDER_TIMING = { requestIdleMs: 8000, retryMs: 1000, stallMs: 90000 };

/** The protocol a staging stream is upgraded to (GET /v1/staging/<id>/stream). */
export const STREAM_PROTOCOL = "vse-staging/1";
/** A receiving stream with no traffic this long is closed (the sender may wait for its own upstream meanwhile). */
const STREAM_IDLE_MS = 120000;
const FRAME_HEADER_BYTES = 8;

export interface ManifestFile {
  name: StagedFile;
  size: number;
  sha256: string;
  chunks: string[];
}

export interface StagingManifest {
  v: 1;
  /** The image's id, or the snapshot's key (both 64 hex digits): the id in the staging URLs. */
  image: string;
  chunkSize: number;
  files: ManifestFile[];
  /** Absent for an image (as manifests were before snapshots were staged). */
  kind?: "snapshot";
}

/** The manifest as sent: its exact JSON text and the CA's signature over MANIFEST_DOMAIN + text (base64). */
export interface SignedManifest {
  manifest: string;
  signature: string;
}

/** Where a host forwards to: an agent's https URL and the subtree that agent forwards to in turn. */
export interface StagingTarget {
  url: string;
  children: StagingTarget[];
}

const HEX64 = /^[0-9a-f]{64}$/;
/** A staging run's id: the controller's, carried down the tree with every start. */
export const RUN_PATTERN = /^[0-9a-f]{16}$/;

function sha256(data: Buffer): string {
  return crypto.createHash("sha256").update(data).digest("hex");
}

function chunkCount(size: number, chunkSize: number): number {
  return Math.max(1, Math.ceil(size / chunkSize));
}

function chunkLength(f: ManifestFile, chunkSize: number, i: number): number {
  return Math.min(chunkSize, f.size - i * chunkSize);
}

/** Hashes an image's files in dir (a store's <id> directory), or a snapshot's (<snapshots>/<key>), into its manifest. */
export async function buildManifest(dir: string, image: string, chunkSize = DEFAULT_CHUNK_BYTES, kind: StagedKind = "image"): Promise<StagingManifest> {
  if (!IMAGE_ID_PATTERN.test(image)) throw new Error(`${kind} id ${JSON.stringify(image)}: expected 64 lower-case hex digits`);
  checkChunkSize(chunkSize);
  const files: ManifestFile[] = [];
  for (const name of stagedFiles(kind)) {
    const file = path.join(dir, name);
    const fh = await fs.promises.open(file, "r");
    try {
      const { size } = await fh.stat();
      if (size > STAGING_LIMITS.maxFileBytes) throw new Error(`${file}: ${size} bytes, more than staging takes (${STAGING_LIMITS.maxFileBytes})`);
      const whole = crypto.createHash("sha256");
      const chunks: string[] = [];
      const buf = Buffer.alloc(chunkSize);
      for (let i = 0; i < chunkCount(size, chunkSize); i++) {
        const len = Math.min(chunkSize, size - i * chunkSize);
        const { bytesRead } = await fh.read(buf, 0, len, i * chunkSize);
        if (bytesRead !== len) throw new Error(`${file}: changed while it was hashed`);
        whole.update(buf.subarray(0, len));
        chunks.push(sha256(buf.subarray(0, len)));
      }
      files.push({ name, size, sha256: whole.digest("hex"), chunks });
    } finally {
      await fh.close();
    }
  }
  return { v: 1, image, chunkSize, files, ...(kind === "snapshot" ? { kind } : {}) };
}

function checkChunkSize(chunkSize: number): void {
  const { minChunkBytes: lo, maxChunkBytes: hi } = STAGING_LIMITS;
  if (!Number.isInteger(chunkSize) || chunkSize < lo || chunkSize > hi || (chunkSize & (chunkSize - 1)) !== 0)
    throw new Error(`chunkSize: expected a power of two from ${lo} to ${hi} bytes, found ${chunkSize}`);
}

/** Signs a manifest with the cluster CA's private key (PEM); only the controller holds it. */
export function signManifest(m: StagingManifest, caKeyPem: string | Buffer): SignedManifest {
  const text = JSON.stringify(m);
  const signature = crypto.sign("sha256", Buffer.from(MANIFEST_DOMAIN + text), caKeyPem).toString("base64");
  return { manifest: text, signature };
}

/** What is wrong with a manifest's shape, or undefined. */
function checkManifestShape(m: unknown, image: string): string | undefined {
  if (typeof m !== "object" || m === null || Array.isArray(m)) return "expected an object";
  const o = m as Record<string, unknown>;
  if (Object.keys(o).some((k) => !["v", "image", "chunkSize", "files", "kind"].includes(k))) return "expected only v, image, chunkSize, files, kind";
  if (o.v !== 1) return "v: expected 1";
  if (o.kind !== undefined && o.kind !== "snapshot") return `kind: expected "snapshot" or none (an image), found ${JSON.stringify(o.kind)}`;
  const expected = stagedFiles(o.kind === "snapshot" ? "snapshot" : "image");
  if (o.image !== image) return `image: expected ${image} (the image of the URL)`;
  try {
    checkChunkSize(o.chunkSize as number);
  } catch (err) {
    return (err as Error).message;
  }
  const chunkSize = o.chunkSize as number;
  if (!Array.isArray(o.files) || o.files.length !== expected.length) return `files: expected ${expected.join(", ")}`;
  for (let i = 0; i < expected.length; i++) {
    const f = o.files[i] as Record<string, unknown> | null;
    const where = `files[${i}]`;
    if (typeof f !== "object" || f === null || Object.keys(f).some((k) => !["name", "size", "sha256", "chunks"].includes(k)))
      return `${where}: expected { name, size, sha256, chunks }`;
    if (f.name !== expected[i]) return `${where}.name: expected ${expected[i]}`;
    if (typeof f.size !== "number" || !Number.isInteger(f.size) || f.size < 0 || f.size > STAGING_LIMITS.maxFileBytes)
      return `${where}.size: expected 0 to ${STAGING_LIMITS.maxFileBytes} bytes`;
    if (typeof f.sha256 !== "string" || !HEX64.test(f.sha256)) return `${where}.sha256: expected 64 hex digits`;
    if (!Array.isArray(f.chunks) || f.chunks.length !== chunkCount(f.size, chunkSize) || !f.chunks.every((c) => typeof c === "string" && HEX64.test(c)))
      return `${where}.chunks: expected ${chunkCount(f.size, chunkSize)} sha256 digests`;
  }
  return undefined;
}

/** Checks the signature against the cluster's CA certificate, then the manifest's shape; returns it parsed. */
export function verifyManifest(signed: SignedManifest, caCertPem: string, image: string): StagingManifest {
  let ok = false;
  try {
    const key = new crypto.X509Certificate(caCertPem).publicKey;
    ok = crypto.verify("sha256", Buffer.from(MANIFEST_DOMAIN + signed.manifest), key, Buffer.from(signed.signature, "base64"));
  } catch {
    ok = false;
  }
  if (!ok) throw new AgentRefusal(403, `manifest of image ${image}: the signature is not the cluster CA's; refused`);
  let m: unknown;
  try {
    m = JSON.parse(signed.manifest);
  } catch (err) {
    throw new AgentRefusal(400, `manifest: expected JSON (${(err as Error).message})`);
  }
  const problem = checkManifestShape(m, image);
  if (problem) throw new AgentRefusal(400, `manifest: ${problem}`);
  return m as StagingManifest;
}

/** The cluster CA certificate an agent pins: the last certificate of its own chain (tls.ts writes the host's certificate, then the CA's). */
export function caFromChain(chainPem: string): string {
  const certs = chainPem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g) ?? [];
  const last = certs.length >= 2 ? certs[certs.length - 1] : undefined;
  if (last === undefined) throw new Error("expected the host's certificate followed by the cluster CA's");
  const ca = new crypto.X509Certificate(last);
  if (!ca.ca || !new crypto.X509Certificate(certs[0] as string).verify(ca.publicKey))
    throw new Error("the last certificate of the chain is not the CA that signed the first");
  return last.endsWith("\n") ? last : `${last}\n`;
}

/** Checks a subtree from a request: https URLs only, bounded size, depth and fanout. */
export function checkSubtree(children: unknown, where = "children"): StagingTarget[] {
  let count = 0;
  const walk = (list: unknown, at: string, depth: number): StagingTarget[] => {
    if (!Array.isArray(list)) throw new AgentRefusal(400, `${at}: expected a list of { url, children }`);
    if (list.length > STAGING_LIMITS.maxChildren) throw new AgentRefusal(400, `${at}: expected at most ${STAGING_LIMITS.maxChildren} children`);
    if (depth > STAGING_LIMITS.maxSubtreeDepth) throw new AgentRefusal(400, `${at}: the subtree is deeper than ${STAGING_LIMITS.maxSubtreeDepth}`);
    return list.map((c: unknown, i) => {
      const here = `${at}[${i}]`;
      if (typeof c !== "object" || c === null || Object.keys(c).some((k) => k !== "url" && k !== "children") || typeof (c as StagingTarget).url !== "string")
        throw new AgentRefusal(400, `${here}: expected { url, children }`);
      const url = (c as StagingTarget).url;
      let kind: string;
      try {
        kind = parseAgentUrl(url).kind;
      } catch (err) {
        throw new AgentRefusal(400, `${here}.url: ${(err as Error).message}`);
      }
      if (kind !== "https") throw new AgentRefusal(400, `${here}.url: expected https://<address>:<port>, found ${JSON.stringify(url)}`);
      if (++count > STAGING_LIMITS.maxSubtreeAgents) throw new AgentRefusal(400, `${where}: more than ${STAGING_LIMITS.maxSubtreeAgents} agents`);
      return { url, children: walk((c as StagingTarget).children ?? [], `${here}.children`, depth + 1) };
    });
  };
  return walk(children, where, 1);
}

/** Where a sender's chunks come from: a receiving session (pipelined), or a complete image's files. */
export interface ChunkSource {
  readonly manifest: StagingManifest;
  readonly signed: SignedManifest;
  /** The staging run this source serves now (the controller's, passed down with every start). */
  readonly run: string;
  /** Resolves once chunk c of file f is verified here; rejects when this source gives up. */
  ready(f: number, c: number): Promise<void>;
  read(f: number, c: number): Promise<Buffer>;
}

/** What an agent answers about one image. */
export interface StagingStatus {
  image: string;
  /** The run of the latest start (absent when none): a controller reads only the status of its own run. */
  run?: string;
  state: "absent" | "receiving" | "complete" | "failed";
  /** The host had the image before this staging: nothing was received. */
  skipped: boolean;
  bytesTotal: number;
  bytesVerified: number;
  /** Chunk bytes that arrived whole (verified, refused or already had). */
  bytesReceived: number;
  chunksRefused: number;
  /** Per file, one character per chunk: 1 verified here, 0 not (yet). */
  have: string[];
  children: ForwardStatus[];
  error?: string;
}

export interface ForwardStatus {
  url: string;
  state: "sending" | "done" | "failed";
  bytesSent: number;
  /** Times the link was taken up again after a failure. */
  resumes: number;
  /** Bytes the receiver already had when the link was taken up again (not re-sent), summed over resumes. */
  bytesNotResent: number;
  /** Bytes sent since the link was last taken up again (all of bytesSent when it never broke). */
  bytesSentSinceResume: number;
  /** The child answered that it had the image already. */
  skipped: boolean;
  error?: string;
}

/**
 * One keep-alive HTTPS connection to an agent, with the cluster's CA pinned
 * and the address checked before the token is sent (connectPinned); raw chunk
 * bodies, not the JSON client's.
 */
export class StagingLink {
  private readonly agent: http.Agent;
  private readonly address: string;
  private readonly port: number;
  private readonly caFingerprint: string;

  constructor(
    readonly url: string,
    private readonly token: string,
    private readonly caPem: string,
  ) {
    const ep = parseAgentUrl(url);
    if (ep.kind !== "https") throw new Error(`staging target ${url}: expected https://<address>:<port>`);
    this.address = ep.address;
    this.port = ep.port;
    this.caFingerprint = new crypto.X509Certificate(caPem).fingerprint256;
    const agent = new http.Agent({ keepAlive: true, maxSockets: 2 });
    // Node's Agent takes a connection made asynchronously through the callback.
    (agent as unknown as { createConnection: unknown }).createConnection = (_o: unknown, cb: (err: Error | null, s?: unknown) => void) => {
      connectPinned(this.address, this.port, this.caPem, this.caFingerprint, 10000).then(
        (s) => cb(null, s),
        (err: Error) => cb(err),
      );
      return undefined;
    };
    this.agent = agent;
  }

  request(method: string, pathname: string, body: Buffer | undefined, timeoutMs = SENDER_TIMING.requestIdleMs): Promise<{ status: number; json: unknown }> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          agent: this.agent,
          host: this.address,
          port: this.port,
          path: pathname,
          method,
          timeout: timeoutMs,
          headers: {
            Host: `${this.address}:${this.port}`,
            Authorization: `Bearer ${this.token}`,
            ...(body ? { "Content-Type": method === "PUT" ? "application/octet-stream" : "application/json", "Content-Length": body.length } : {}),
          },
        },
        (res) => {
          const parts: Buffer[] = [];
          res.on("data", (c: Buffer) => parts.push(c));
          res.on("end", () => {
            const text = Buffer.concat(parts).toString("utf8");
            let json: unknown;
            try {
              json = JSON.parse(text);
            } catch {
              json = { error: text };
            }
            resolve({ status: res.statusCode ?? 500, json });
          });
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`${this.url}: ${method} ${pathname}: no progress within ${timeoutMs} ms`)));
      req.on("error", reject);
      req.end(body);
    });
  }

  private async json<T>(method: string, pathname: string, body?: unknown): Promise<T> {
    const r = await this.request(method, pathname, body === undefined ? undefined : Buffer.from(JSON.stringify(body)));
    if (r.status >= 400) throw answerError(r.status, `${this.url}: ${method} ${pathname}`, r.json);
    return r.json as T;
  }

  start(image: string, signed: SignedManifest, children: StagingTarget[], run: string): Promise<StagingStatus> {
    return this.json("POST", `/v1/staging/${image}`, { ...signed, children, run });
  }

  status(image: string): Promise<StagingStatus> {
    return this.json("GET", `/v1/staging/${image}`);
  }

  /** Sends one chunk's bytes as they are (a hostile sender in the tests sends other bytes); throws StagingRefused on a refusal. */
  async sendChunk(image: string, f: number, c: number, data: Buffer): Promise<void> {
    const r = await this.request("PUT", `/v1/staging/${image}/${f}/${c}`, data);
    if (r.status >= 400) throw answerError(r.status, `${this.url}: chunk ${c} of file ${f}`, r.json);
  }

  /** Opens a chunk stream to the receiver (a session for the image must have been started there). */
  async openStream(image: string, onAnswer: (bytes: number) => void): Promise<ChunkStream> {
    const sock = await connectPinned(this.address, this.port, this.caPem, this.caFingerprint, 10000);
    const pathname = `/v1/staging/${image}/stream`;
    return new Promise((resolve, reject) => {
      const req = http.request({
        createConnection: () => sock,
        host: this.address,
        port: this.port,
        path: pathname,
        method: "GET",
        timeout: SENDER_TIMING.requestIdleMs,
        headers: { Host: `${this.address}:${this.port}`, Authorization: `Bearer ${this.token}`, Connection: "Upgrade", Upgrade: STREAM_PROTOCOL },
      });
      req.on("upgrade", (res, socket, head) => {
        if (res.headers.upgrade !== STREAM_PROTOCOL) {
          socket.destroy();
          reject(new Error(`${this.url}: ${pathname}: upgraded to ${String(res.headers.upgrade)}, not ${STREAM_PROTOCOL}`));
          return;
        }
        resolve(new ChunkStream(socket, head, `${this.url}: stream of image ${image.slice(0, 12)}`, onAnswer));
      });
      req.on("response", (res) => {
        const parts: Buffer[] = [];
        res.on("data", (c: Buffer) => parts.push(c));
        res.on("end", () => {
          let json: unknown;
          try {
            json = JSON.parse(Buffer.concat(parts).toString("utf8"));
          } catch {
            json = {};
          }
          sock.destroy();
          reject(answerError(res.statusCode ?? 500, `${this.url}: GET ${pathname}`, json));
        });
      });
      req.on("timeout", () => req.destroy(new Error(`${this.url}: GET ${pathname}: no answer within ${SENDER_TIMING.requestIdleMs} ms`)));
      req.on("error", (err) => {
        sock.destroy();
        reject(err);
      });
      req.end();
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/**
 * The sending end of a staging stream: chunks written one after the other on
 * one connection; the receiver answers each in order. A refusal ends the
 * stream with StagingRefused; a stream with unanswered chunks that stays
 * silent for SENDER_TIMING.requestIdleMs is cut (and resumed by the caller).
 */
export class ChunkStream {
  private sizes: number[] = [];
  private pending = "";
  private error?: Error;
  private idle?: NodeJS.Timeout;
  private settled: (() => void)[] = [];
  private closedCleanly = false;

  constructor(
    private readonly socket: Duplex,
    head: Buffer,
    private readonly where: string,
    private readonly onAnswer: (bytes: number) => void,
  ) {
    socket.on("data", (d: Buffer) => this.answers(d.toString("utf8")));
    socket.on("error", (err: Error) => this.fail(new Error(`${where}: ${err.message}`)));
    socket.on("close", () => this.fail(new Error(`${where}: closed with ${this.sizes.length} chunk(s) unanswered`)));
    if (head.length) this.answers(head.toString("utf8"));
  }

  private answers(text: string): void {
    this.pending += text;
    let nl: number;
    while ((nl = this.pending.indexOf("\n")) >= 0) {
      const line = this.pending.slice(0, nl);
      this.pending = this.pending.slice(nl + 1);
      let a: { result?: string; status?: number; error?: string };
      try {
        a = JSON.parse(line) as typeof a;
      } catch {
        a = { status: 502, error: `not an answer: ${line.slice(0, 200)}` };
      }
      if (a.error !== undefined || a.status !== undefined) {
        this.fail(answerError(a.status ?? 500, this.where, a));
        return;
      }
      const n = this.sizes.shift();
      if (n === undefined) {
        this.fail(new Error(`${this.where}: an answer for a chunk that was not sent`));
        return;
      }
      this.onAnswer(n);
      this.arm();
    }
  }

  /** The idle timer runs only while chunks wait for their answer (waiting for the upstream is not this link's stall). */
  private arm(): void {
    clearTimeout(this.idle);
    this.idle = undefined;
    if (this.sizes.length === 0) {
      for (const r of this.settled.splice(0)) r();
      return;
    }
    this.idle = setTimeout(
      () => this.fail(new Error(`${this.where}: ${this.sizes.length} chunk(s) unanswered for ${SENDER_TIMING.requestIdleMs} ms`)),
      SENDER_TIMING.requestIdleMs,
    );
  }

  private fail(err: Error): void {
    // After finish() or close() the end of the connection is ours, not a failure.
    if (this.error || this.closedCleanly) return;
    this.error = err;
    clearTimeout(this.idle);
    this.socket.destroy();
    for (const r of this.settled.splice(0)) r();
  }

  /** Writes one chunk; resolves once the connection took it (its answer comes later). */
  async send(f: number, c: number, data: Buffer): Promise<void> {
    if (this.error) throw this.error;
    const header = Buffer.alloc(FRAME_HEADER_BYTES);
    header.writeUInt32BE(f, 0);
    header.writeUInt32BE(c, 4);
    this.sizes.push(data.length);
    if (this.sizes.length === 1) this.arm();
    this.socket.write(header);
    if (!this.socket.write(data))
      await new Promise<void>((resolve) => {
        const done = () => {
          this.socket.off("drain", done);
          this.socket.off("close", done);
          resolve();
        };
        this.socket.on("drain", done);
        this.socket.on("close", done);
      });
    if (this.error) throw this.error;
  }

  /** Waits until every chunk sent is answered, then ends the stream; throws what went wrong. */
  async finish(): Promise<void> {
    if (this.sizes.length && !this.error) await new Promise<void>((r) => this.settled.push(r));
    if (this.error) throw this.error;
    this.closedCleanly = true;
    clearTimeout(this.idle);
    this.socket.end();
  }

  close(): void {
    this.closedCleanly = true;
    clearTimeout(this.idle);
    this.socket.destroy();
  }
}

/** A refusal (4xx) ends a link; a timeout (408), overload (429, 503) or a server error is retried like a broken link. */
function answerError(status: number, where: string, json: unknown): Error {
  const message = `${where}: ${status} ${(json as { error?: string }).error || http.STATUS_CODES[status] || ""}`;
  return status >= 400 && status < 500 && status !== 408 && status !== 429 ? new StagingRefused(status, message) : new Error(message);
}

/** The receiver refused (4xx): retrying the same bytes will not help. */
export class StagingRefused extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Sends an image from a source to one agent and its subtree: start (the
 * receiver says what it has), then the chunks it lacks, each as soon as the
 * source has it. A broken link is taken up again and resumed from what the
 * receiver verified; a refusal or no progress for SENDER_TIMING.stallMs ends it.
 */
export class Forwarder {
  readonly status: ForwardStatus;
  readonly done: Promise<void>;
  private readonly link: StagingLink;
  private stopped = false;

  constructor(
    private readonly source: ChunkSource,
    readonly target: StagingTarget,
    token: string,
    caPem: string,
    private readonly log: (m: string) => void = () => undefined,
  ) {
    this.status = { url: target.url, state: "sending", bytesSent: 0, resumes: 0, bytesNotResent: 0, bytesSentSinceResume: 0, skipped: false };
    this.link = new StagingLink(target.url, token, caPem);
    this.done = this.run().finally(() => this.link.close());
  }

  stop(): void {
    this.stopped = true;
    this.stream?.close();
  }

  private stream?: ChunkStream;

  private async run(): Promise<void> {
    const m = this.source.manifest;
    let lastProgress = Date.now();
    let started = false;
    let rerun = false;
    while (!this.stopped) {
      const run = this.source.run;
      try {
        const st = await this.link.start(m.image, this.source.signed, this.target.children, run);
        if (started && !rerun) {
          this.status.resumes++;
          this.status.bytesNotResent += st.bytesVerified;
          this.status.bytesSentSinceResume = 0;
          this.log(`staging ${m.image.slice(0, 12)} to ${this.target.url}: link taken up again, it has ${st.bytesVerified} bytes verified`);
        }
        started = true;
        rerun = false;
        lastProgress = Date.now();
        if (st.state === "complete") {
          this.status.skipped = st.skipped && this.status.bytesSent === 0;
          this.status.state = "done";
          return;
        }
        const missing: [number, number][] = [];
        for (let f = 0; f < m.files.length; f++) for (let c = 0; c < m.files[f].chunks.length; c++) if (st.have[f]?.[c] !== "1") missing.push([f, c]);
        const stream = await this.link.openStream(m.image, (n) => {
          this.status.bytesSent += n;
          this.status.bytesSentSinceResume += n;
          lastProgress = Date.now();
        });
        this.stream = stream;
        try {
          for (const [f, c] of missing) {
            await this.source.ready(f, c);
            if (this.stopped) return;
            // A new run reached the source: the child is told (a start) before it gets more.
            if (this.source.run !== run) throw new RunChanged();
            // Waiting for the upstream is not this link's stall.
            lastProgress = Math.max(lastProgress, Date.now());
            await stream.send(f, c, await this.source.read(f, c));
          }
          await stream.finish();
        } finally {
          stream.close();
        }
        if (this.stopped) return;
        if (this.source.run !== run) throw new RunChanged();
        this.status.state = "done";
        return;
      } catch (err) {
        const e = err as Error;
        if (e instanceof RunChanged) {
          rerun = true;
          continue;
        }
        this.status.error = e.message;
        if (e instanceof StagingRefused || e instanceof SourceFailed || Date.now() - lastProgress > SENDER_TIMING.stallMs) {
          this.status.state = "failed";
          this.log(`staging ${m.image.slice(0, 12)} to ${this.target.url} failed: ${e.message}`);
          return;
        }
        await sleep(SENDER_TIMING.retryMs);
      }
    }
  }
}

class RunChanged extends Error {}

/** The source of a forwarder gave up (its own receiving failed). */
export class SourceFailed extends Error {}

/** A complete image's files in a directory, checked against the manifest chunk by chunk before use. */
export class FileSource implements ChunkSource {
  private fds: fs.promises.FileHandle[] = [];

  private constructor(
    readonly manifest: StagingManifest,
    readonly signed: SignedManifest,
    public run: string,
  ) {}

  /** Opens dir's files; with verify, refuses files that do not match the manifest (another build under the same id). */
  static async open(dir: string, manifest: StagingManifest, signed: SignedManifest, verify: boolean, run = ""): Promise<FileSource> {
    const s = new FileSource(manifest, signed, run);
    try {
      for (const f of manifest.files) {
        const fh = await fs.promises.open(path.join(dir, f.name), "r");
        s.fds.push(fh);
        if ((await fh.stat()).size !== f.size) throw new Error(`${f.name} has ${(await fh.stat()).size} bytes, the manifest says ${f.size}`);
      }
      if (verify) {
        for (let fi = 0; fi < manifest.files.length; fi++)
          for (let c = 0; c < manifest.files[fi].chunks.length; c++)
            if (sha256(await s.read(fi, c)) !== manifest.files[fi].chunks[c])
              throw new Error(`chunk ${c} of ${manifest.files[fi].name} differs from the manifest`);
      }
    } catch (err) {
      await s.close();
      throw err;
    }
    return s;
  }

  ready(): Promise<void> {
    return Promise.resolve();
  }

  async read(f: number, c: number): Promise<Buffer> {
    const mf = this.manifest.files[f];
    const len = chunkLength(mf, this.manifest.chunkSize, c);
    const buf = Buffer.alloc(Math.max(0, len));
    const { bytesRead } = await this.fds[f].read(buf, 0, buf.length, c * this.manifest.chunkSize);
    if (bytesRead !== buf.length) throw new SourceFailed(`${mf.name}: short read at chunk ${c}`);
    return buf;
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.fds.map((fh) => fh.close()));
    this.fds = [];
  }
}

/** One image (or snapshot) being received (and forwarded) by this agent. */
class Session implements ChunkSource {
  run = "";
  state: StagingStatus["state"] = "receiving";
  skipped = false;
  error?: string;
  bytesVerified = 0;
  bytesReceived = 0;
  chunksRefused = 0;
  forwarders: Forwarder[] = [];
  readonly have: Uint8Array[];
  private readonly writing = new Set<string>();
  /** Each file's whole sha256, fed in chunk order as the chunks are verified (not all at the end, when every host of a tree would hash at once). */
  private readonly whole: { hash: crypto.Hash; next: number; queue: Promise<void> }[];
  private waiters = new Map<string, { resolve: () => void; reject: (e: Error) => void }[]>();
  fds: fs.promises.FileHandle[] = [];
  private fileSource?: FileSource;
  private finishing?: Promise<void>;

  constructor(
    readonly manifest: StagingManifest,
    readonly signed: SignedManifest,
    readonly dir: string,
    /** Where it is published when complete: the image store, or the snapshots beside it. */
    private readonly publishRoot: string,
  ) {
    this.have = manifest.files.map((f) => new Uint8Array(f.chunks.length));
    this.whole = manifest.files.map(() => ({ hash: crypto.createHash("sha256"), next: 0, queue: Promise.resolve() }));
  }

  get bytesTotal(): number {
    return this.manifest.files.reduce((n, f) => n + f.size, 0);
  }

  get partDir(): string {
    return path.join(this.dir, "image");
  }

  /** Opens (or re-opens after a restart) the partial files; chunks already there are re-hashed and kept when they match. */
  async openPartial(): Promise<void> {
    fs.mkdirSync(this.partDir, { recursive: true, mode: 0o755 });
    for (let fi = 0; fi < this.manifest.files.length; fi++) {
      const f = this.manifest.files[fi];
      const file = path.join(this.partDir, f.name);
      const fh = await fs.promises.open(file, fs.existsSync(file) ? "r+" : "w+", 0o644);
      this.fds.push(fh);
      const size = (await fh.stat()).size;
      if (size !== f.size) await fh.truncate(f.size);
      if (size === 0) continue;
      for (let c = 0; c < f.chunks.length; c++) {
        if (c * this.manifest.chunkSize >= size) break;
        const data = await this.read(fi, c);
        if (sha256(data) === f.chunks[c]) {
          this.have[fi][c] = 1;
          this.bytesVerified += data.length;
        }
      }
    }
    if (this.complete()) await this.finish();
  }

  /** Serves forwarding from the store's complete image instead of partial files (the host had it). */
  useStoreFiles(src: FileSource): void {
    this.fileSource = src;
    for (const h of this.have) h.fill(1);
    this.bytesVerified = this.bytesTotal;
  }

  complete(): boolean {
    return this.have.every((h) => h.every((x) => x === 1));
  }

  ready(f: number, c: number): Promise<void> {
    if (this.have[f][c]) return Promise.resolve();
    if (this.state === "failed") return Promise.reject(new SourceFailed(this.error ?? "failed"));
    return new Promise((resolve, reject) => {
      const k = `${f}/${c}`;
      const list = this.waiters.get(k) ?? [];
      list.push({ resolve, reject });
      this.waiters.set(k, list);
    });
  }

  async read(f: number, c: number): Promise<Buffer> {
    if (this.fileSource) return this.fileSource.read(f, c);
    const mf = this.manifest.files[f];
    const buf = Buffer.alloc(Math.max(0, chunkLength(mf, this.manifest.chunkSize, c)));
    const { bytesRead } = await this.fds[f].read(buf, 0, buf.length, c * this.manifest.chunkSize);
    if (bytesRead !== buf.length) throw new SourceFailed(`${mf.name}: short read at chunk ${c}`);
    return buf;
  }

  /** A chunk that arrived whole: checked, written, announced to the forwarders. */
  async accept(f: number, c: number, data: Buffer): Promise<"verified" | "duplicate"> {
    this.bytesReceived += data.length;
    const mf = this.manifest.files[f];
    const got = sha256(data);
    if (got !== mf.chunks[c]) {
      this.chunksRefused++;
      throw new AgentRefusal(
        422,
        `chunk ${c} of ${mf.name} of image ${this.manifest.image}: sha256 ${got}, the manifest says ${mf.chunks[c]}; refused, nothing written`,
      );
    }
    const k = `${f}/${c}`;
    if (this.have[f][c] || this.writing.has(k) || this.state !== "receiving") return "duplicate";
    this.writing.add(k);
    try {
      await this.fds[f].write(data, 0, data.length, c * this.manifest.chunkSize);
    } finally {
      this.writing.delete(k);
    }
    this.have[f][c] = 1;
    this.bytesVerified += data.length;
    for (const w of this.waiters.get(k) ?? []) w.resolve();
    this.waiters.delete(k);
    await this.hashAhead(f);
    if (this.complete()) await this.finish();
    return "verified";
  }

  /** Feeds the file's whole hash with the verified chunks that follow what it has, in order (one feeder at a time per file). */
  private hashAhead(f: number): Promise<void> {
    const w = this.whole[f];
    w.queue = w.queue.then(async () => {
      while (w.next < this.have[f].length && this.have[f][w.next]) w.hash.update(await this.read(f, w.next++));
    });
    return w.queue;
  }

  /** Every chunk is verified: check each whole file's hash, that image.json (snapshot.json) names it, and move it into the store in one rename. */
  finish(): Promise<void> {
    this.finishing ??= (async () => {
      try {
        for (let fi = 0; fi < this.manifest.files.length; fi++) {
          const f = this.manifest.files[fi];
          await this.hashAhead(fi);
          if (this.whole[fi].next !== f.chunks.length || this.whole[fi].hash.digest("hex") !== f.sha256)
            throw new Error(`${f.name}: the whole file's sha256 differs from the manifest`);
          await this.fds[fi].sync();
        }
        const kind = kindOf(this.manifest);
        const { file, field } = metaFile(kind);
        const meta = JSON.parse(fs.readFileSync(path.join(this.partDir, file), "utf8")) as Record<string, unknown>;
        if (meta[field] !== this.manifest.image) throw new Error(`${file} names ${kind} ${String(meta[field])}, not ${this.manifest.image}`);
        const root = this.publishRoot;
        fs.mkdirSync(root, { recursive: true, mode: 0o755 });
        const final = path.join(root, this.manifest.image);
        if (fs.existsSync(path.join(final, file))) {
          // Published meanwhile by someone else (a build on this host): the store's copy stands.
          fs.rmSync(this.partDir, { recursive: true, force: true });
        } else {
          fs.rmSync(final, { recursive: true, force: true });
          fs.renameSync(this.partDir, final);
        }
        const dfd = fs.openSync(root, "r");
        try {
          fs.fsyncSync(dfd);
        } finally {
          fs.closeSync(dfd);
        }
        this.state = "complete";
      } catch (err) {
        this.fail((err as Error).message);
        // Nothing verified may stay: what failed as a whole is received again from scratch.
        fs.rmSync(this.partDir, { recursive: true, force: true });
      }
    })();
    return this.finishing;
  }

  fail(message: string): void {
    this.state = "failed";
    this.error = message;
    for (const list of this.waiters.values()) for (const w of list) w.reject(new SourceFailed(message));
    this.waiters.clear();
  }

  view(): StagingStatus {
    return {
      image: this.manifest.image,
      run: this.run,
      state: this.state,
      skipped: this.skipped,
      bytesTotal: this.bytesTotal,
      bytesVerified: this.bytesVerified,
      bytesReceived: this.bytesReceived,
      chunksRefused: this.chunksRefused,
      have: this.have.map((h) => Array.from(h).join("")),
      children: this.forwarders.map((fw) => ({ ...fw.status })),
      ...(this.error ? { error: this.error } : {}),
    };
  }

  /** Ends forwarding and closes the files once every forwarder is done. */
  async settle(): Promise<void> {
    await Promise.allSettled(this.forwarders.map((f) => f.done));
    await Promise.allSettled(this.fds.map((fh) => fh.close()));
    await this.fileSource?.close();
  }
}

export interface StagingServiceOptions {
  store: ImageStore;
  token: string;
  /** The cluster CA certificate (PEM): checks manifests and pins the children's agents. Without it the agent takes no staging. */
  caPem?: string;
  log: (m: string) => void;
}

/** The receiving (and forwarding) side of staging, one per agent; server.ts hands it the /v1/staging/ routes. */
export class StagingService {
  private readonly sessions = new Map<string, Session>();

  constructor(private readonly o: StagingServiceOptions) {}

  private get stagingRoot(): string {
    return path.join(this.o.store.root, ".staging");
  }

  async handle(req: http.IncomingMessage, pathname: string): Promise<[number, unknown]> {
    const m = /^\/v1\/staging\/([^/]+)(?:\/([0-9]{1,2})\/([0-9]{1,6}))?$/.exec(pathname);
    if (!m) throw new AgentRefusal(404, `no such endpoint ${pathname}: expected /v1/staging/<image id>[/<file>/<chunk>]`);
    const image = m[1];
    if (!IMAGE_ID_PATTERN.test(image)) throw new AgentRefusal(400, `image id ${JSON.stringify(image.slice(0, 80))}: expected 64 lower-case hex digits`);
    if (m[2] !== undefined) {
      if (req.method !== "PUT") throw new AgentRefusal(405, `${req.method} is not allowed on ${pathname}`);
      return this.chunk(req, image, Number(m[2]), Number(m[3]));
    }
    if (req.method === "GET") return [200, this.status(image)];
    if (req.method === "POST") return [200, await this.start(image, await readJson(req, STAGING_LIMITS.maxStartBodyBytes))];
    throw new AgentRefusal(405, `${req.method} is not allowed on ${pathname}`);
  }

  /** Where a kind is published: images into the store, snapshots beside it (where the QEMU driver restores them from). */
  private publishRoot(kind: StagedKind): string {
    return kind === "snapshot" ? snapshotRootOf(this.o.store.root) : this.o.store.root;
  }

  private inStore(image: string, kind: StagedKind): boolean {
    if (kind === "snapshot") return fs.existsSync(path.join(this.publishRoot(kind), image, metaFile(kind).file));
    try {
      this.o.store.meta(image);
      return true;
    } catch {
      return false;
    }
  }

  status(image: string): StagingStatus {
    const s = this.sessions.get(image);
    if (s) return s.view();
    // An id is an image's or a snapshot's (both sha256, of different things): either one here is complete.
    const complete = this.inStore(image, "image") || this.inStore(image, "snapshot");
    return {
      image,
      state: complete ? "complete" : "absent",
      skipped: complete,
      bytesTotal: 0,
      bytesVerified: 0,
      bytesReceived: 0,
      chunksRefused: 0,
      have: [],
      children: [],
    };
  }

  private async start(image: string, body: unknown): Promise<StagingStatus> {
    const caPem = this.o.caPem;
    if (!caPem) throw new AgentRefusal(409, "this agent has no cluster CA (it serves no TLS): images are not staged to it");
    if (typeof body !== "object" || body === null || Object.keys(body).some((k) => !["manifest", "signature", "children", "run"].includes(k)))
      throw new AgentRefusal(400, "body: expected { manifest, signature, children, run }");
    const b = body as { manifest?: unknown; signature?: unknown; children?: unknown; run?: unknown };
    if (typeof b.manifest !== "string" || typeof b.signature !== "string") throw new AgentRefusal(400, "body: manifest and signature: expected strings");
    if (typeof b.run !== "string" || !RUN_PATTERN.test(b.run)) throw new AgentRefusal(400, "run: expected 16 hex digits");
    const signed = { manifest: b.manifest, signature: b.signature };
    const manifest = verifyManifest(signed, caPem, image);
    const children = checkSubtree(b.children ?? []);

    let s = this.sessions.get(image);
    if (s && s.signed.manifest !== signed.manifest) {
      // Another manifest for the same id (another chunk size): only when nothing is in flight for the old one.
      if (s.state === "receiving" || s.forwarders.some((f) => f.status.state === "sending"))
        throw new AgentRefusal(409, `image ${image} is being staged here with another manifest`);
      await s.settle();
      this.sessions.delete(image);
      s = undefined;
    }
    if (!s) {
      if (this.sessions.size >= STAGING_LIMITS.maxSessions) this.prune();
      if (this.sessions.size >= STAGING_LIMITS.maxSessions) throw new AgentRefusal(503, `${STAGING_LIMITS.maxSessions} images are being staged here already`);
      s = await this.open(image, manifest, signed);
      this.sessions.set(image, s);
    } else if ((s.state === "failed" || (s.state === "complete" && s.run !== b.run)) && !s.forwarders.some((f) => f.status.state === "sending")) {
      // Nothing in flight: a failed session starts over from what is verified on disk; one completed by an
      // earlier run is now a host that has the image (a sender of this run resuming after a lost answer is not).
      await s.settle();
      s = await this.open(image, manifest, signed);
      this.sessions.set(image, s);
    }
    s.run = b.run;
    this.forward(s, children);
    return s.view();
  }

  private async open(image: string, manifest: StagingManifest, signed: SignedManifest): Promise<Session> {
    const dir = path.join(this.stagingRoot, image);
    const kind = kindOf(manifest);
    const s = new Session(manifest, signed, dir, this.publishRoot(kind));
    if (this.inStore(image, kind)) {
      s.skipped = true;
      s.state = "complete";
      try {
        s.useStoreFiles(await FileSource.open(path.join(this.publishRoot(kind), image), manifest, signed, true));
      } catch (err) {
        // The id is the same but the bytes are not what the controller sends: say so, forward nothing from it.
        s.fail(`the ${kind} ${image} in this host's store differs from the manifest (${(err as Error).message}); not forwarded from here`);
      }
      return s;
    }
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const manifestFile = path.join(dir, "manifest.json");
    const old = fs.existsSync(manifestFile) ? fs.readFileSync(manifestFile, "utf8") : undefined;
    if (old !== undefined && old !== JSON.stringify(signed)) fs.rmSync(path.join(dir, "image"), { recursive: true, force: true });
    fs.writeFileSync(manifestFile, JSON.stringify(signed), { mode: 0o600 });
    await s.openPartial();
    return s;
  }

  /** Starts forwarding to the children not already being served; a child whose forwarder failed is tried again. */
  private forward(s: Session, children: StagingTarget[]): void {
    if (s.state === "failed" && s.skipped) return;
    for (const child of children) {
      const cur = s.forwarders.find((f) => f.target.url === child.url);
      // One still sending takes the new run to its child itself; a finished one is started again for it.
      if (cur && cur.status.state === "sending") continue;
      if (cur) s.forwarders.splice(s.forwarders.indexOf(cur), 1);
      s.forwarders.push(new Forwarder(s, child, this.o.token, this.o.caPem!, this.o.log));
    }
  }

  /** Forgets finished sessions (their images are in the store, or they failed and nothing is sending). */
  private prune(): void {
    for (const [id, s] of this.sessions) {
      if (s.state !== "receiving" && s.forwarders.every((f) => f.status.state !== "sending")) {
        void s.settle();
        this.sessions.delete(id);
      }
    }
  }

  private async chunk(req: http.IncomingMessage, image: string, f: number, c: number): Promise<[number, unknown]> {
    const s = this.sessions.get(image);
    if (!s) throw new AgentRefusal(409, `no staging of image ${image} was started here: POST /v1/staging/${image} first`);
    const mf = s.manifest.files[f];
    if (!mf || c >= mf.chunks.length) throw new AgentRefusal(404, `image ${image} has no chunk ${c} of file ${f}`);
    const expected = chunkLength(mf, s.manifest.chunkSize, c);
    const declared = req.headers["content-length"];
    if (declared === undefined || Number(declared) !== expected)
      throw new AgentRefusal(400, `chunk ${c} of ${mf.name}: expected Content-Length ${expected}, found ${declared ?? "none"}`);
    const data = await readRaw(req, expected);
    const result = await s.accept(f, c, data);
    return [200, { chunk: c, file: mf.name, result, state: s.state }];
  }

  /**
   * A chunk stream (server.ts hands it every upgrade request of the TLS
   * listener, with the token check to run first): the session must exist; frames are read one chunk at a time
   * (the connection paused while a chunk is checked and written), each answered
   * with one line; the first refusal is answered and ends the stream.
   */
  stream(req: http.IncomingMessage, socket: Duplex, head: Buffer, authenticate: () => void): void {
    const refuse = (err: unknown) => {
      // An upgraded connection is outside the server's request timeouts: anything but a started session's stream is answered and closed.
      const status = err instanceof AgentRefusal ? err.status : 500;
      const text = JSON.stringify({ error: (err as Error).message });
      socket.end(
        `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ""}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`,
      );
    };
    let s: Session;
    try {
      authenticate();
      const m = /^\/v1\/staging\/([0-9a-f]{64})\/stream$/.exec(new URL(req.url ?? "/", "http://agent").pathname);
      if (!m) throw new AgentRefusal(404, `no such endpoint: expected /v1/staging/<image id>/stream`);
      if (req.method !== "GET" || req.headers.upgrade !== STREAM_PROTOCOL) throw new AgentRefusal(400, `expected GET with Upgrade: ${STREAM_PROTOCOL}`);
      const found = this.sessions.get(m[1]);
      if (!found) throw new AgentRefusal(409, `no staging of image ${m[1]} was started here: POST /v1/staging/${m[1]} first`);
      s = found;
    } catch (err) {
      refuse(err);
      return;
    }
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${STREAM_PROTOCOL}\r\n\r\n`);
    receiveChunks(s, socket, head);
  }

  /** Stops every forwarder and closes the files (the agent is exiting). */
  async close(): Promise<void> {
    for (const s of this.sessions.values()) for (const f of s.forwarders) f.stop();
    await Promise.allSettled([...this.sessions.values()].map((s) => s.settle()));
  }
}

/** The receiving end of a chunk stream: frames parsed as they arrive, never more than one chunk (and one TLS record) held. */
function receiveChunks(s: Session, socket: Duplex, head: Buffer): void {
  const parts: Buffer[] = head.length ? [head] : [];
  let held = head.length;
  let frame: { f: number; c: number; len: number } | undefined;
  let busy = false;
  let ended = false;
  let over = false;
  (socket as net.Socket).setTimeout(STREAM_IDLE_MS, () => socket.destroy());
  socket.on("error", () => socket.destroy());
  const take = (n: number): Buffer => {
    const all = parts.length === 1 ? parts[0] : Buffer.concat(parts, held);
    parts.length = 0;
    if (all.length > n) parts.push(all.subarray(n));
    held = all.length - n;
    return all.subarray(0, n);
  };
  const pump = async (): Promise<void> => {
    if (busy || over) return;
    busy = true;
    try {
      for (;;) {
        if (!frame) {
          if (held < FRAME_HEADER_BYTES) break;
          const h = take(FRAME_HEADER_BYTES);
          const f = h.readUInt32BE(0);
          const c = h.readUInt32BE(4);
          const mf = s.manifest.files[f];
          if (!mf || c >= mf.chunks.length) throw new AgentRefusal(404, `image ${s.manifest.image} has no chunk ${c} of file ${f}`);
          frame = { f, c, len: chunkLength(mf, s.manifest.chunkSize, c) };
        }
        if (held < frame.len) break;
        const { f, c, len } = frame;
        frame = undefined;
        // A copy: the chunk outlives the buffers it arrived in (it is written and may be forwarded).
        const data = Buffer.from(take(len));
        socket.pause();
        const result = await s.accept(f, c, data);
        socket.resume();
        socket.write(JSON.stringify({ file: f, chunk: c, result }) + "\n");
      }
      if (ended) {
        if (frame || held) throw new AgentRefusal(400, "the stream ended inside a chunk");
        over = true;
        socket.end();
      }
    } catch (err) {
      over = true;
      const status = err instanceof AgentRefusal ? err.status : 500;
      socket.end(JSON.stringify({ status, error: (err as Error).message }) + "\n");
      setTimeout(() => socket.destroy(), 1000).unref();
    } finally {
      busy = false;
    }
  };
  socket.on("data", (d: Buffer) => {
    if (over) return;
    parts.push(d);
    held += d.length;
    void pump();
  });
  socket.on("end", () => {
    ended = true;
    void pump();
  });
  void pump();
}

/** Reads exactly len bytes of body (the chunk), refusing more. */
function readRaw(req: http.IncomingMessage, len: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const buf = Buffer.alloc(len);
    let at = 0;
    req.on("data", (d: Buffer) => {
      if (at + d.length > len) {
        req.removeAllListeners("data");
        req.resume();
        reject(new AgentRefusal(413, `chunk body: expected ${len} bytes, more arrived`));
        return;
      }
      d.copy(buf, at);
      at += d.length;
    });
    req.on("end", () => (at === len ? resolve(buf) : reject(new AgentRefusal(400, `chunk body: expected ${len} bytes, ${at} arrived`))));
    req.on("error", reject);
    req.on("aborted", () => reject(new AgentRefusal(400, "chunk body: the sender went away")));
  });
}

function readJson(req: http.IncomingMessage, max: number): Promise<unknown> {
  const declared = Number(req.headers["content-length"] ?? "0");
  if (!(declared > 0) || declared > max) {
    req.resume();
    return Promise.reject(
      new AgentRefusal(declared > max ? 413 : 400, `body: expected JSON of at most ${max} bytes with its Content-Length, found ${declared}`),
    );
  }
  return readRaw(req, declared).then((b) => {
    try {
      return JSON.parse(b.toString("utf8")) as unknown;
    } catch (err) {
      throw new AgentRefusal(400, `body: expected JSON (${(err as Error).message})`);
    }
  });
}

/** The agent's staging service: the CA from --ca, else from its own TLS chain; an agent without TLS takes no staging (it shares this machine's store). */
export function agentStaging(o: { store: ImageStore; token: string; caFile?: string; chainPem?: string; log: (m: string) => void }): StagingService {
  let caPem: string | undefined;
  if (o.caFile !== undefined) {
    caPem = fs.readFileSync(o.caFile, "utf8");
    if (!new crypto.X509Certificate(caPem).ca) throw new Error(`--ca ${o.caFile}: expected the cluster's CA certificate`);
  } else if (o.chainPem !== undefined) {
    try {
      caPem = caFromChain(o.chainPem);
    } catch (err) {
      throw new Error(`--tls-cert: no cluster CA for image staging: ${(err as Error).message} (or pass --ca FILE)`);
    }
  }
  return new StagingService({ store: o.store, token: o.token, caPem, log: o.log });
}
