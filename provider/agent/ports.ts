/** A TCP port free on address now, for a listener bound right after (a lost race shows as that bind failing). */
export function freePort(address: string): Promise<number> {
  const net = require("net") as typeof import("net");
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, address, () => {
      const port = (srv.address() as import("net").AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}
