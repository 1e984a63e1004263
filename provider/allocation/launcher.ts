// How an agent is started on host i (issue 9): the command line that runs a
// program there, as an argument array for execa (never a shell string). The
// bootstrap tree (agent/tree.ts) and the controller use it for every link;
// what the started agent needs beyond its argv (token, certificate and key,
// its subtree) goes over its stdin, so no secret is ever on a command line.
//
// - netns: a namespace host on this machine (`ip netns exec <ns> argv…`,
//   allocation/netns.ts); `ip netns exec` execs in place, so the child's pid
//   is the program's.
// - direct: this machine itself (the host's address must be one of its own).
// Another launcher (ssh) adds its own kind here; it must carry stdin and
// stdout both ways, as ssh does.
import { netnsExec } from "./netns";

export type LauncherKind = "netns" | "direct";

/** A host as a launcher sees it: its address, and for namespace hosts the namespace. */
export interface LaunchHost {
  address: string;
  netns?: string;
}

export function launcherKind(host: LaunchHost): LauncherKind {
  return host.netns ? "netns" : "direct";
}

/** The command that runs argv (argv[0] the program) on host: { file, args } for execa. */
export function launchCommand(host: LaunchHost, argv: string[]): { file: string; args: string[] } {
  if (argv.length === 0 || !argv.every((a) => typeof a === "string" && !a.includes("\0"))) throw new Error("argv: expected a non-empty list of strings");
  switch (launcherKind(host)) {
    case "netns":
      return netnsExec(host.netns!, argv);
    case "direct":
      return { file: argv[0], args: argv.slice(1) };
  }
}
