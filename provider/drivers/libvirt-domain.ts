// The node agent's allowlist for libvirt domain XML: exactly what
// templates/libvirt/domain.xml.hbs renders, each element and attribute with a
// value grammar. A small tokenizer of its own (no DTDs, entities, CDATA or
// processing instructions), and the XML that is defined is re-serialized from
// what was checked, so libvirt never reads anything the check did not see.
import * as path from "path";
import { xmlEscape } from "../render/render";
import {
  boundedInt,
  checkNic,
  ConfigFacts,
  ConfigRefused,
  found,
  ImageResolver,
  INITRD_REF,
  isKernelArgs,
  isLocalUnicast,
  KERNEL_REF,
  MAX_KERNEL_ARGS,
  MAX_MEMORY_MIB,
  MAX_NICS,
  MAX_VCPUS,
  mcastEndpoint,
  MIN_MEMORY_MIB,
  NetworkContext,
  refuseControlCharacters,
} from "./qemu";

/** The console file a domain must name; the agent replaces it with its own per-VM file. */
export const AGENT_CONSOLE_PLACEHOLDER = "agent:console";
/** The only emulator a domain may name. */
export const LIBVIRT_EMULATOR = "/usr/bin/qemu-system-x86_64";
/** A domain name: vse-<cluster key>-<VM name> (domainName in network.ts). */
export const DOMAIN_NAME = /^vse-[0-9a-f]{10}-[a-z](?:[a-z0-9-]{0,78}[a-z0-9])?$/;

interface Attr {
  value: string;
  line: number;
}

/** One element as the tokenizer read it. */
interface XElement {
  name: string;
  line: number;
  attrs: Map<string, Attr>;
  children: XElement[];
  /** Character data directly inside, entities decoded. */
  text: string;
}

interface Grammar {
  test: (v: string) => boolean;
  /** What is allowed, as a refusal says it. */
  expect: string;
}

interface Rule {
  attrs?: Record<string, Grammar & { optional?: boolean }>;
  children?: Record<string, { rule: Rule; min: number; max: number }>;
  /** Text content grammar; without it, only whitespace may appear between children. */
  text?: Grammar;
}

const exactly = (v: string, why = ""): Grammar => ({ test: (x) => x === v, expect: `${v}${why}` });
const oneOf = (...vs: string[]): Grammar => ({ test: (x) => vs.includes(x), expect: `one of ${vs.join(", ")}` });
const intIn = (min: number, max: number, what: string): Grammar => ({
  test: (x) => boundedInt(x, min, max) !== undefined,
  expect: `${what} from ${min} to ${max}`,
});
const leaf = (text: Grammar, attrs?: Rule["attrs"]): Rule => ({ text, attrs });
const empty = (attrs?: Rule["attrs"]): Rule => ({ attrs });
const once = (rule: Rule, min = 1) => ({ rule, min, max: 1 });

const MEMORY = intIn(MIN_MEMORY_MIB, MAX_MEMORY_MIB, "MiB");
const DESTROY = exactly("destroy");
const IMAGE = "from the agent's image store (<id>: 64 lower-case hex digits)";

/** The allowlist: templates/libvirt/domain.xml.hbs, element by element. */
const DOMAIN: Rule = {
  attrs: { type: oneOf("qemu", "kvm") },
  children: {
    name: once(
      leaf({ test: (v) => DOMAIN_NAME.test(v), expect: "vse-<cluster key: 10 hex digits>-<VM name: a lower-case DNS label of at most 80 characters>" }),
    ),
    description: once(leaf({ test: (v) => v.length <= 1024 && !/[\n]/.test(v), expect: "one line of at most 1024 printable characters" }), 0),
    memory: once(leaf(MEMORY, { unit: exactly("MiB") })),
    currentMemory: once(leaf(MEMORY, { unit: exactly("MiB") })),
    vcpu: once(leaf(intIn(1, MAX_VCPUS, "a vCPU count"), { placement: exactly("static") })),
    os: once({
      children: {
        type: once(leaf(exactly("hvm"), { arch: exactly("x86_64"), machine: oneOf("pc", "q35", "microvm") })),
        kernel: once(leaf({ test: (v) => KERNEL_REF.test(v), expect: `image:<id>/vmlinuz ${IMAGE}` })),
        initrd: once(leaf({ test: (v) => INITRD_REF.test(v), expect: `image:<id>/initrd.img ${IMAGE}` })),
        cmdline: once(leaf({ test: isKernelArgs, expect: `a kernel command line of printable ASCII, at most ${MAX_KERNEL_ARGS} bytes` }), 0),
      },
    }),
    features: once({ children: { acpi: once(empty(), 0) } }, 0),
    clock: once(empty({ offset: exactly("utc") }), 0),
    on_poweroff: once(leaf(DESTROY), 0),
    on_reboot: once(leaf(DESTROY), 0),
    on_crash: once(leaf(DESTROY), 0),
    devices: once({
      children: {
        emulator: once(leaf(exactly(LIBVIRT_EMULATOR))),
        serial: once({
          attrs: { type: exactly("file", " (a console file; no pty, tcp, udp, unix or other serial)") },
          children: {
            source: once(empty({ path: exactly(AGENT_CONSOLE_PLACEHOLDER, " (the node agent picks the console file)"), append: exactly("off") })),
            target: once(empty({ port: exactly("0") })),
          },
        }),
        interface: {
          rule: {
            attrs: { type: exactly("mcast", " (QEMU's socket backend on a multicast group; no network, bridge, user, direct or other interface)") },
            children: {
              mac: once(empty({ address: { test: isLocalUnicast, expect: "a locally administered unicast MAC in lower case" } })),
              source: once(
                empty({
                  address: { test: (v) => mcastEndpoint(v, "1024") !== undefined, expect: "a multicast group 239.255.<0-255>.<1-255>" },
                  port: intIn(1024, 65535, "a port"),
                }),
              ),
              model: once(empty({ type: exactly("virtio") })),
            },
          },
          min: 0,
          max: MAX_NICS,
        },
        memballoon: once(empty({ model: exactly("none") }), 0),
      },
    }),
  },
};

const NAME = /^[A-Za-z_:][A-Za-z0-9_.:-]*/;
const PREDEFINED: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

/** Decodes the five predefined entities and numeric references to printable characters; refuses anything else. */
function decode(raw: string, line: number, where: string): string {
  return raw.replace(/&([^;&<\s]{0,12});?/g, (m, body: string) => {
    const fail = (): never => {
      throw new ConfigRefused(
        line,
        where,
        `the entity reference ${found(m, 20)} in ${where} is not allowed (only &lt; &gt; &amp; &quot; &apos; and numeric references to printable characters)`,
      );
    };
    if (!m.endsWith(";")) fail();
    if (body in PREDEFINED) return PREDEFINED[body];
    const num = /^#([0-9]{1,7})$/.exec(body) ?? /^#x([0-9a-fA-F]{1,6})$/.exec(body);
    if (!num) fail();
    const code = parseInt(num![1], body[1] === "x" ? 16 : 10);
    const printable = code >= 0x20 && code !== 0x7f && !(code >= 0x80 && code <= 0x9f) && !(code >= 0xd800 && code <= 0xdfff) && code <= 0x10ffff;
    if (!printable) fail();
    return String.fromCodePoint(code);
  });
}

/** Reads the XML into one element tree, checking every element and attribute against the allowlist as it opens. */
function tokenize(xml: string): XElement {
  refuseControlCharacters(xml);
  const lineStarts = [0];
  for (let i = 0; i < xml.length; i++) if (xml[i] === "\n") lineStarts.push(i + 1);
  const lineAt = (pos: number): number => {
    let lo = 0;
    let hi = lineStarts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (lineStarts[mid] <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo + 1;
  };
  const stack: { el: XElement; rule: Rule; counts: Map<string, number> }[] = [];
  let root: XElement | undefined;
  let pos = 0;
  const ws = () => {
    while (xml[pos] === " " || xml[pos] === "\n") pos++;
  };

  while (pos < xml.length) {
    const line = lineAt(pos);
    if (xml.startsWith("<!--", pos)) {
      const end = xml.indexOf("-->", pos + 4);
      if (end < 0) throw new ConfigRefused(line, "comment", "a comment that never ends (no -->)");
      const body = xml.slice(pos + 4, end);
      if (body.includes("--") || body.endsWith("-")) throw new ConfigRefused(line, "comment", "a comment may not contain '--' (XML forbids it)");
      pos = end + 3;
      continue;
    }
    if (xml.startsWith("<!", pos)) {
      const what = xml.startsWith("<!DOCTYPE", pos)
        ? "a DOCTYPE declaration"
        : xml.startsWith("<!ENTITY", pos)
          ? "an ENTITY declaration"
          : xml.startsWith("<![CDATA[", pos)
            ? "a CDATA section"
            : "a markup declaration";
      throw new ConfigRefused(
        line,
        "declaration",
        `${what} is not allowed in a domain XML (no DTDs, entities or CDATA; the node agent reads plain elements only)`,
      );
    }
    if (xml.startsWith("<?", pos)) {
      throw new ConfigRefused(line, "processing instruction", "processing instructions (including <?xml …?>) are not allowed in a domain XML");
    }
    if (xml.startsWith("</", pos)) {
      pos += 2;
      const m = NAME.exec(xml.slice(pos, pos + 100));
      const top = stack[stack.length - 1];
      if (!m || !top || m[0] !== top.el.name) {
        throw new ConfigRefused(
          line,
          m?.[0] ?? "element",
          `closing tag </${m?.[0] ?? "…"}> does not close ${top ? `<${top.el.name}> (line ${top.el.line})` : "any open element"}`,
        );
      }
      pos += m[0].length;
      ws();
      if (xml[pos] !== ">") throw new ConfigRefused(line, top.el.name, `closing tag </${top.el.name}> is not well-formed`);
      pos++;
      stack.pop();
      finish(top.el, top.rule, top.counts);
      continue;
    }
    if (xml[pos] === "<") {
      pos++;
      const m = NAME.exec(xml.slice(pos, pos + 100));
      if (!m) throw new ConfigRefused(line, "element", `expected an element name after '<', found ${found(xml.slice(pos, pos + 20))}`);
      const name = m[0];
      pos += name.length;
      const parent = stack[stack.length - 1];
      let rule: Rule;
      if (!parent) {
        if (root) throw new ConfigRefused(line, name, `<${name}> after the end of <domain>: a domain XML has one root element`);
        if (name !== "domain") throw new ConfigRefused(line, name, `the root element must be <domain>, found <${name}>`);
        rule = DOMAIN;
      } else {
        const allowed = parent.rule.children ?? {};
        const child = Object.prototype.hasOwnProperty.call(allowed, name) ? allowed[name] : undefined;
        if (!child) {
          const list = Object.keys(allowed).map((c) => `<${c}>`);
          throw new ConfigRefused(
            line,
            name,
            `<${name}> is not an element the node agent accepts in <${parent.el.name}> (it allows ${list.length ? list.join(", ") : "no elements there"})`,
          );
        }
        const count = (parent.counts.get(name) ?? 0) + 1;
        if (count > child.max) {
          throw new ConfigRefused(
            line,
            name,
            child.max === 1 ? `a second <${name}> in <${parent.el.name}>; it may appear once` : `more than ${child.max} <${name}> in <${parent.el.name}>`,
          );
        }
        parent.counts.set(name, count);
        rule = child.rule;
      }
      const el: XElement = { name, line, attrs: new Map(), children: [], text: "" };
      // Attributes, each checked against the element's allowlist.
      for (;;) {
        const before = pos;
        ws();
        if (xml.startsWith("/>", pos) || xml[pos] === ">") break;
        if (pos === before) throw new ConfigRefused(lineAt(pos), name, `<${name}> is not well-formed at ${found(xml.slice(pos, pos + 20))}`);
        const aline = lineAt(pos);
        const a = NAME.exec(xml.slice(pos, pos + 100));
        if (!a) throw new ConfigRefused(aline, name, `<${name}> is not well-formed at ${found(xml.slice(pos, pos + 20))}`);
        pos += a[0].length;
        ws();
        if (xml[pos] !== "=") throw new ConfigRefused(aline, name, `attribute ${a[0]} of <${name}> has no value`);
        pos++;
        ws();
        const q = xml[pos];
        if (q !== "'" && q !== '"') throw new ConfigRefused(aline, name, `attribute ${a[0]} of <${name}>: expected a quoted value`);
        const end = xml.indexOf(q, pos + 1);
        if (end < 0) throw new ConfigRefused(aline, name, `attribute ${a[0]} of <${name}>: the quoted value never ends`);
        const raw = xml.slice(pos + 1, end);
        if (raw.includes("<")) throw new ConfigRefused(aline, name, `attribute ${a[0]} of <${name}> contains '<', which XML does not allow there`);
        pos = end + 1;
        const attrRules = rule.attrs ?? {};
        const g = Object.prototype.hasOwnProperty.call(attrRules, a[0]) ? attrRules[a[0]] : undefined;
        if (!g) {
          const list = Object.keys(attrRules);
          throw new ConfigRefused(
            aline,
            `${name}@${a[0]}`,
            `<${name}> has no attribute ${a[0]} the node agent accepts (it allows ${list.length ? list.join(", ") : "no attributes there"})`,
          );
        }
        if (el.attrs.has(a[0])) throw new ConfigRefused(aline, `${name}@${a[0]}`, `attribute ${a[0]} of <${name}> is given twice`);
        const value = decode(raw, aline, `<${name}> ${a[0]}`);
        if (!g.test(value)) throw new ConfigRefused(aline, `${name}@${a[0]}`, `<${name}> ${a[0]} expects ${g.expect}, found ${found(value)}`);
        el.attrs.set(a[0], { value, line: aline });
      }
      for (const [attr, g] of Object.entries(rule.attrs ?? {})) {
        if (!g.optional && !el.attrs.has(attr)) throw new ConfigRefused(line, `${name}@${attr}`, `<${name}> needs attribute ${attr} (${g.expect})`);
      }
      if (parent) parent.el.children.push(el);
      else root = el;
      if (xml.startsWith("/>", pos)) {
        pos += 2;
        finish(el, rule, new Map());
      } else {
        pos++;
        stack.push({ el, rule, counts: new Map() });
      }
      continue;
    }
    // Character data up to the next markup.
    const next = xml.indexOf("<", pos);
    const end = next < 0 ? xml.length : next;
    const top = stack[stack.length - 1];
    const raw = xml.slice(pos, end);
    if (!top) {
      if (raw.trim()) throw new ConfigRefused(line, "text", `text outside <domain>: ${found(raw.trim())}`);
    } else {
      top.el.text += decode(raw, line, `<${top.el.name}>`);
    }
    pos = end;
  }
  if (stack.length) {
    const top = stack[stack.length - 1];
    throw new ConfigRefused(lineAt(xml.length), top.el.name, `<${top.el.name}> (line ${top.el.line}) is never closed`);
  }
  if (!root) throw new ConfigRefused(lineAt(xml.length), "domain", "the config has no <domain> element");
  return root;
}

/** Checks an element once it is closed: its text, and that every required child is there. */
function finish(el: XElement, rule: Rule, counts: Map<string, number>): void {
  if (rule.text) {
    if (el.children.length) throw new ConfigRefused(el.line, el.name, `<${el.name}> takes text only, no elements`);
    if (!rule.text.test(el.text)) throw new ConfigRefused(el.line, el.name, `<${el.name}> expects ${rule.text.expect}, found ${found(el.text)}`);
  } else if (el.text.trim()) {
    throw new ConfigRefused(el.line, el.name, `<${el.name}> takes no text, found ${found(el.text.trim())}`);
  }
  for (const [name, c] of Object.entries(rule.children ?? {})) {
    if ((counts.get(name) ?? 0) < c.min) throw new ConfigRefused(el.line, name, `<${el.name}> has no <${name}>, which the node agent requires`);
  }
}

const child = (el: XElement, name: string): XElement | undefined => el.children.find((c) => c.name === name);
const attr = (el: XElement | undefined, name: string): string => el?.attrs.get(name)?.value ?? "";

/** Accepts the domain and derives its facts, with the checks that span elements. */
function parseTree(xml: string, ctx?: NetworkContext): { root: XElement; facts: ConfigFacts } {
  const root = tokenize(xml);
  const os = child(root, "os")!;
  const devices = child(root, "devices")!;
  const memory = child(root, "memory")!;
  const current = child(root, "currentMemory")!;
  if (current.text !== memory.text) {
    throw new ConfigRefused(current.line, "currentMemory", `<currentMemory> must equal <memory> (${memory.text} MiB), found ${found(current.text)}`);
  }
  const kernel = child(os, "kernel")!;
  const initrd = child(os, "initrd")!;
  const kernelId = KERNEL_REF.exec(kernel.text)![1];
  const initrdId = INITRD_REF.exec(initrd.text)![1];
  if (kernelId !== initrdId) {
    throw new ConfigRefused(initrd.line, "initrd", `<initrd> names image ${initrdId} but <kernel> names image ${kernelId}; both must come from the same image`);
  }
  const macs = new Set<string>();
  const nics: ConfigFacts["nics"] = [];
  for (const iface of devices.children.filter((c) => c.name === "interface")) {
    const mac = attr(child(iface, "mac"), "address");
    if (macs.has(mac)) throw new ConfigRefused(iface.line, "interface", `MAC ${mac} is given to two interfaces`);
    macs.add(mac);
    const source = child(iface, "source")!;
    // libvirt's mcast interface cannot name a local address (only its udp one can): no localaddr, so checkNic allows it on loopback hosts only.
    const nic = { mac, mcast: mcastEndpoint(attr(source, "address"), attr(source, "port"))! };
    if (ctx) checkNic(nic, ctx, iface.line, "interface");
    nics.push(nic);
  }
  const type = child(os, "type")!;
  return {
    root,
    facts: {
      name: child(root, "name")!.text,
      machine: attr(type, "machine") as ConfigFacts["machine"],
      accel: attr(root, "type") === "kvm" ? "kvm" : "tcg",
      memoryMiB: Number(memory.text),
      vcpus: Number(child(root, "vcpu")!.text),
      imageId: kernelId,
      kernelArgs: child(os, "cmdline")?.text ?? "",
      nics,
    },
  };
}

/**
 * Parses a rendered libvirt domain XML (templates/libvirt/domain.xml.hbs)
 * against the agent's allowlist; throws ConfigRefused naming the line of the
 * offending element. Returns the facts site policy is checked against.
 */
export function parseLibvirtDomain(xml: string, ctx?: NetworkContext): { facts: ConfigFacts } {
  return { facts: parseTree(xml, ctx).facts };
}

function checkedPath(p: string, what: string): string {
  if (!path.isAbsolute(p) || /[\x00-\x1f\x7f-\x9f]/.test(p)) throw new Error(`${what} resolved to ${found(p)}, which is not an absolute path`);
  return p;
}

/**
 * The XML the agent defines: the accepted domain, re-serialized from what was
 * checked (comments dropped), with the image references resolved to the image
 * store's files and agent:console replaced by consolePath, all XML-escaped.
 */
export function resolveLibvirtDomain(xml: string, opts: { resolveImage: ImageResolver; consolePath: string }): string {
  const { root, facts } = parseTree(xml);
  const kernel = checkedPath(opts.resolveImage(facts.imageId, "vmlinuz"), "the kernel");
  const initrd = checkedPath(opts.resolveImage(facts.imageId, "initrd.img"), "the initrd");
  const consolePath = checkedPath(opts.consolePath, "the console file");
  const out: string[] = [];
  const write = (el: XElement, depth: number, parent?: XElement): void => {
    const attrs = [...el.attrs].map(([k, a]) => {
      const v = el.name === "source" && parent?.name === "serial" && k === "path" ? consolePath : a.value;
      return ` ${k}='${xmlEscape(v)}'`;
    });
    const pad = "  ".repeat(depth);
    const open = `${pad}<${el.name}${attrs.join("")}`;
    if (el.children.length) {
      out.push(`${open}>`);
      for (const c of el.children) write(c, depth + 1, el);
      out.push(`${pad}</${el.name}>`);
    } else {
      const text =
        parent?.name === "os" && el.name === "kernel" ? kernel : parent?.name === "os" && el.name === "initrd" ? initrd : el.text.trim() ? el.text : "";
      out.push(text ? `${open}>${xmlEscape(text)}</${el.name}>` : `${open}/>`);
    }
  };
  write(root, 0);
  return `${out.join("\n")}\n`;
}
