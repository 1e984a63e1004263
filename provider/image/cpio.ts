// A minimal writer for the "newc" cpio format the Linux kernel unpacks as an
// initramfs. Written here so that building an image needs no cpio binary and
// the archive is byte-identical for identical inputs (fixed mtimes, owners, order).

export interface CpioEntry {
  path: string; // without leading "/"
  mode: number; // including the file-type bits
  data?: Buffer;
  rdevMajor?: number;
  rdevMinor?: number;
  /** Owner and group; root (0) unless given. */
  uid?: number;
  gid?: number;
}

export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return n.toString(16).padStart(8, "0");
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

export function cpioArchive(entries: CpioEntry[]): Buffer {
  const chunks: Buffer[] = [];
  let ino = 1;
  const push = (e: CpioEntry) => {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(e.path + "\0");
    const header =
      "070701" +
      hex8(ino++) +
      hex8(e.mode) +
      hex8(e.uid ?? 0) +
      hex8(e.gid ?? 0) +
      hex8((e.mode & S_IFDIR) === S_IFDIR ? 2 : 1) + // nlink
      hex8(0) + // mtime: fixed, for reproducible archives
      hex8(data.length) +
      hex8(0) +
      hex8(0) +
      hex8(e.rdevMajor ?? 0) +
      hex8(e.rdevMinor ?? 0) +
      hex8(name.length) +
      hex8(0);
    const h = Buffer.from(header, "ascii");
    chunks.push(h, name, pad4(h.length + name.length), data, pad4(data.length));
  };
  for (const e of entries) push(e);
  push({ path: "TRAILER!!!", mode: 0 });
  return Buffer.concat(chunks);
}
