import * as net from "net";

/** Runs one QMP command on a QEMU monitor socket and returns its "return" value. */
export function qmpCommand(socketPath: string, execute: string, args?: object, timeoutMs = 3000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection(socketPath);
    let buf = "";
    let stage: "greeting" | "capabilities" | "command" = "greeting";
    const timer = setTimeout(() => finish(new Error(`QMP ${execute}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const finish = (err: Error | null, value?: unknown) => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    sock.on("error", (err) => finish(new Error(`QMP ${execute}: ${err.message}`)));
    sock.on("data", (chunk) => {
      buf += chunk.toString("utf8");
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        let msg: { QMP?: unknown; return?: unknown; error?: { desc: string }; event?: string };
        try {
          msg = JSON.parse(line);
        } catch {
          return finish(new Error(`QMP ${execute}: unreadable reply ${line.slice(0, 200)}`));
        }
        if (msg.event) continue;
        if (msg.error) return finish(new Error(`QMP ${execute}: ${msg.error.desc}`));
        if (stage === "greeting" && msg.QMP) {
          stage = "capabilities";
          sock.write(JSON.stringify({ execute: "qmp_capabilities" }) + "\n");
        } else if (stage === "capabilities" && "return" in msg) {
          stage = "command";
          sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + "\n");
        } else if (stage === "command" && "return" in msg) {
          return finish(null, msg.return);
        }
      }
    });
    // QEMU may close the socket as it quits; for "quit" that is the answer.
    sock.on("close", () => (execute === "quit" && stage === "command" ? finish(null, {}) : finish(new Error(`QMP ${execute}: connection closed`))));
  });
}
