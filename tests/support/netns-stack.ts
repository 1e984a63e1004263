// An e2e fixture: namespace hosts under a fixed tag and subnet (whatever a
// killed earlier run left under the tag is torn down first) and a test stack
// of the given definitions; both gone after the file's tests.
import * as fs from "fs";
import * as path from "path";
import { netnsLeftovers, NetnsHosts, netnsPids, setUpNetnsHosts, tearDownNetnsHosts } from "../../provider/allocation/netns";
import { createTestStack, processesUnder, TestStack } from "./stack";

export function useNetnsStack(o: {
  tag: string;
  subnet: string;
  count: number;
  definitions: Record<string, string>;
}): () => { hosts: NetnsHosts; t: TestStack } {
  let hosts: NetnsHosts | undefined;
  let t: TestStack | undefined;
  beforeAll(async () => {
    await tearDownNetnsHosts(o.tag);
    hosts = await setUpNetnsHosts({ tag: o.tag, count: o.count, subnet: o.subnet });
    t = await createTestStack(o.definitions);
  });
  afterAll(async () => {
    try {
      if (t) await t.cleanup();
    } finally {
      await tearDownNetnsHosts(o.tag);
    }
  });
  return () => ({ hosts: hosts!, t: t! });
}

/** `pulumi destroy`, then: no process in any of the hosts or under the stack's directory, no cluster state, and the hosts tear down to nothing. */
export async function destroyLeavesNothing(t: TestStack, hosts: NetnsHosts, tag: string): Promise<void> {
  await t.stack.destroy();
  for (const h of hosts.hosts) expect([h.netns, await netnsPids(h.netns)]).toEqual([h.netns, []]);
  expect(processesUnder(t.dir)).toEqual([]);
  expect(fs.existsSync(path.join(t.stateRoot, "clusters")) ? fs.readdirSync(path.join(t.stateRoot, "clusters")) : []).toEqual([]);
  await tearDownNetnsHosts(tag);
  expect(await netnsLeftovers(tag)).toEqual({ netns: [], links: [] });
}
