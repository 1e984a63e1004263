import { XMLParser, XMLValidator } from "fast-xml-parser";

/** Parses XML strictly; throws with the parser's line and message when it is not well-formed. */
export function parseXml(text: string): Record<string, unknown> {
  const valid = XMLValidator.validate(text);
  if (valid !== true) throw new Error(`XML not well-formed at line ${valid.err.line}: ${valid.err.msg}`);
  return new XMLParser({ ignoreAttributes: false, attributeNamePrefix: "@", parseTagValue: false }).parse(text);
}

export type XlValue = string | number | (string | number)[];

const XL_STRING = /^"([^"\\\n]*)"|^'([^'\\\n]*)'/;
const XL_NUMBER = /^-?\d+/;

function xlScalar(src: string, line: number): { value: string | number; rest: string } {
  const s = XL_STRING.exec(src);
  if (s) return { value: s[1] ?? s[2], rest: src.slice(s[0].length) };
  const n = XL_NUMBER.exec(src);
  if (n) return { value: Number(n[0]), rest: src.slice(n[0].length) };
  throw new Error(`xl.cfg line ${line}: expected a quoted string or a number, found ${JSON.stringify(src.slice(0, 40))}`);
}

/**
 * Checks xl.cfg syntax as xl's parser reads it: '#' comments, and
 * `key = value` lines whose value is a number, a quoted string, or a
 * one-line list of those in brackets. Returns the settings; a key set twice is an error.
 */
export function parseXlConfig(text: string): Map<string, XlValue> {
  const out = new Map<string, XlValue>();
  text.split("\n").forEach((raw, i) => {
    const line = i + 1;
    const t = raw.trim();
    if (!t || t.startsWith("#")) return;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*;?$/.exec(t);
    if (!m) throw new Error(`xl.cfg line ${line}: expected "key = value", found ${JSON.stringify(t)}`);
    if (out.has(m[1])) throw new Error(`xl.cfg line ${line}: ${m[1]} is set twice`);
    let src = m[2];
    let value: XlValue;
    if (src.startsWith("[")) {
      const items: (string | number)[] = [];
      src = src.slice(1).trimStart();
      while (!src.startsWith("]")) {
        const item = xlScalar(src, line);
        items.push(item.value);
        src = item.rest.trimStart();
        if (src.startsWith(",")) src = src.slice(1).trimStart();
        else if (!src.startsWith("]")) throw new Error(`xl.cfg line ${line}: expected ',' or ']' in a list, found ${JSON.stringify(src.slice(0, 40))}`);
      }
      src = src.slice(1);
      value = items;
    } else {
      const s = xlScalar(src, line);
      value = s.value;
      src = s.rest;
    }
    if (src.trim()) throw new Error(`xl.cfg line ${line}: unexpected ${JSON.stringify(src.trim())} after the value`);
    out.set(m[1], value);
  });
  return out;
}

/** VBoxManage subcommands a plan may use, with the options each accepts and how many values each option takes. */
const VBOX_OPTIONS: Record<string, Record<string, number>> = {
  createvm: { "--name": 1, "--ostype": 1, "--register": 0, "--basefolder": 1 },
  modifyvm: {
    "--memory": 1,
    "--cpus": 1,
    "--chipset": 1,
    "--ioapic": 1,
    "--firmware": 1,
    "--graphicscontroller": 1,
    "--audio-driver": 1,
    "--usb-ohci": 1,
    "--boot1": 1,
    "--boot2": 1,
    "--uart1": 2,
    "--uartmode1": 2,
  },
  storagectl: { "--name": 1, "--add": 1, "--controller": 1 },
  storageattach: { "--storagectl": 1, "--port": 1, "--device": 1, "--type": 1, "--medium": 1 },
  startvm: { "--type": 1 },
  controlvm: {},
  unregistervm: { "--delete": 0 },
};
// NIC options carry the NIC's number (1-8).
const VBOX_NIC_OPTION = /^--(nic|intnet|nictype|macaddress)[1-8]$/;

export interface VboxCommand {
  line: number;
  args: string[];
}

/** Checks a VBoxManage plan: each line a JSON array of strings, a known subcommand, known options with their values. */
export function parseVboxPlan(text: string): VboxCommand[] {
  const cmds: VboxCommand[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = i + 1;
    const t = raw.trim();
    if (!t || t.startsWith("#")) return;
    let args: unknown;
    try {
      args = JSON.parse(t);
    } catch (err) {
      throw new Error(`plan line ${line}: not JSON: ${(err as Error).message}`);
    }
    if (!Array.isArray(args) || !args.length || !args.every((a) => typeof a === "string"))
      throw new Error(`plan line ${line}: expected a non-empty array of strings`);
    const [sub, ...rest] = args as string[];
    const options = VBOX_OPTIONS[sub];
    if (!options) throw new Error(`plan line ${line}: unknown VBoxManage subcommand ${JSON.stringify(sub)}`);
    // Every subcommand but createvm names its VM first.
    let k = sub === "createvm" ? 0 : 1;
    if (sub !== "createvm" && (!rest[0] || rest[0].startsWith("--"))) throw new Error(`plan line ${line}: ${sub} needs the VM name first`);
    while (k < rest.length) {
      const opt = rest[k];
      const arity = options[opt] ?? (VBOX_NIC_OPTION.test(opt) ? 1 : undefined);
      if (arity === undefined) throw new Error(`plan line ${line}: ${sub} has no option ${JSON.stringify(opt)}`);
      const values = rest.slice(k + 1, k + 1 + arity);
      if (values.length !== arity || values.some((v) => v === "" || v.startsWith("--"))) throw new Error(`plan line ${line}: ${opt} needs ${arity} value(s)`);
      if (/^--macaddress/.test(opt) && !/^[0-9A-F]{12}$/.test(values[0]))
        throw new Error(`plan line ${line}: ${opt} expects 12 hex digits, found ${values[0]}`);
      if ((opt === "--memory" || opt === "--cpus") && !/^[1-9]\d*$/.test(values[0])) throw new Error(`plan line ${line}: ${opt} expects a positive integer`);
      k += 1 + arity;
    }
    cmds.push({ line, args: args as string[] });
  });
  return cmds;
}
