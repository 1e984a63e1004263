/**
 * Progress of a long step (an image build) on stderr, which the Pulumi engine
 * shows for a dynamic provider: a line when it starts, one with the elapsed
 * time every 30 s while it runs (when the step is asynchronous, so that the
 * timer can fire), and how long it took.
 */
export interface Progress {
  done(): void;
  failed(): void;
}

export interface ProgressOptions {
  intervalMs?: number;
  write?: (line: string) => void;
  now?: () => number;
}

export function elapsed(ms: number): string {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}

export function startProgress(what: string, options: ProgressOptions = {}): Progress {
  const write = options.write ?? ((line: string) => process.stderr.write(line + "\n"));
  const now = options.now ?? Date.now;
  const t0 = now();
  write(`[image] ${what}…`);
  const timer = setInterval(() => write(`[image] ${what}… ${elapsed(now() - t0)}`), options.intervalMs ?? 30_000);
  // Never keeps a process alive on its own.
  timer.unref();
  let ended = false;
  const end = (how: string) => {
    if (ended) return;
    ended = true;
    clearInterval(timer);
    write(`[image] ${what}: ${how} ${elapsed(now() - t0)}`);
  };
  return { done: () => end("done in"), failed: () => end("failed after") };
}
