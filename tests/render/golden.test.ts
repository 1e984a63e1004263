import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { parseQemuConfig } from "../../provider/drivers/qemu";
import { parseLibvirtDomain } from "../../provider/drivers/libvirt";
import { imageRef } from "../../provider/image/busybox";
import { DRIVERS } from "../../provider/drivers/registry";
import { clusterKey, domainName, isLocalUnicastMac, nicsFor } from "../../provider/drivers/network";
import { planClusters } from "../../provider/program/plan";
import { Hypervisor, renderVmConfig, RenderInput } from "../../provider/render/render";
import { regenerateAllowed } from "../support/regenerate";
import { ALL_HYPERVISORS, CASES_KEY, renderCases } from "./cases";
import { parseVboxPlan, parseXlConfig, parseXml } from "./structure";

const GOLDEN_DIR = path.resolve(__dirname, "..", "golden");
/** UPDATE_GOLDEN=1 rewrites tests/golden from the renders (never under CI: the suite then fails to load, saying why). */
const UPDATE = regenerateAllowed("UPDATE_GOLDEN");

function goldenFile(h: Hypervisor, name: string): string {
  return path.join(GOLDEN_DIR, h, `${name}.golden`);
}

type Xml = Record<string, unknown>;
const at = (x: unknown, ...keys: string[]): unknown => keys.reduce<unknown>((o, k) => (o as Xml | undefined)?.[k], x);
const asList = (x: unknown): Xml[] => (x === undefined ? [] : Array.isArray(x) ? (x as Xml[]) : [x as Xml]);
const text = (x: unknown): string => (typeof x === "object" && x !== null ? String((x as Xml)["#text"] ?? "") : String(x));

/** Hypervisor-specific structure: the render parses, and carries every profile field where the hypervisor has a place for it. */
function checkStructure(h: Hypervisor, input: RenderInput, out: string): void {
  const p = input.vm.profile;
  const nics = input.network ? nicsFor(input.clusterKey, input.vm.index) : [];
  const append = ["console=ttyS0", "panic=-1", "quiet", ...input.kernelArgs].join(" ");
  switch (h) {
    case "qemu": {
      const { args, facts } = parseQemuConfig(out);
      expect(facts).toEqual({
        name: input.vm.name,
        machine: p.machine,
        accel: input.accel,
        memoryMiB: p.memoryMiB,
        vcpus: p.vcpus,
        imageId: input.image.id,
        kernelArgs: append,
        nics: nics.map((n) => ({ mac: n.mac, mcast: input.network!.mcast })),
      });
      const opt = (o: string) => args[args.indexOf(o) + 1];
      expect(opt("-name")).toBe(input.vm.name);
      expect(opt("-m")).toBe(`${p.memoryMiB}M`);
      expect(opt("-smp")).toBe(String(p.vcpus));
      expect(opt("-accel")).toBe(input.accel);
      expect(opt("-machine").split(",")[0]).toBe(p.machine);
      expect(opt("-append")).toBe(append);
      expect(args.filter((a) => a.startsWith("virtio-net-pci")).map((a) => /mac=([0-9a-f:]+)/.exec(a)?.[1])).toEqual(nics.map((n) => n.mac));
      break;
    }
    case "libvirt": {
      const d = parseXml(out).domain as Xml;
      expect(d["@type"]).toBe(input.accel === "kvm" ? "kvm" : "qemu");
      expect(text(d.name)).toBe(domainName(input.clusterKey, input.vm.name));
      // The node agent's allowlist accepts the render, with the same facts.
      expect(parseLibvirtDomain(out).facts).toEqual({
        name: domainName(input.clusterKey, input.vm.name),
        machine: p.machine,
        accel: input.accel,
        memoryMiB: p.memoryMiB,
        vcpus: p.vcpus,
        imageId: input.image.id,
        kernelArgs: append,
        nics: nics.map((n) => ({ mac: n.mac, mcast: input.network!.mcast })),
      });
      expect(text(d.memory)).toBe(String(p.memoryMiB));
      expect(at(d, "memory", "@unit")).toBe("MiB");
      expect(text(d.vcpu)).toBe(String(p.vcpus));
      expect(at(d, "os", "type", "@machine")).toBe(p.machine);
      expect(text(at(d, "os", "kernel"))).toBe(input.image.kernel);
      expect(text(at(d, "os", "initrd"))).toBe(input.image.initrd);
      // The parser undoes the escaping: what libvirt reads is exactly the command line.
      expect(text(at(d, "os", "cmdline"))).toBe(append);
      expect(at(d, "devices", "serial", "source", "@path")).toBe("agent:console");
      expect(asList(at(d, "devices", "interface")).map((i) => at(i, "mac", "@address"))).toEqual(nics.map((n) => n.mac));
      break;
    }
    case "xen": {
      const cfg = parseXlConfig(out);
      expect(cfg.get("name")).toBe(input.vm.name);
      expect(cfg.get("type")).toBe(p.machine === "microvm" ? "pv" : "hvm");
      expect(cfg.get("memory")).toBe(p.memoryMiB);
      expect(cfg.get("vcpus")).toBe(p.vcpus);
      expect(cfg.get("kernel")).toBe(input.image.kernel);
      expect(cfg.get("ramdisk")).toBe(input.image.initrd);
      expect(String(cfg.get("cmdline"))).toContain(p.machine === "microvm" ? "console=hvc0" : "console=ttyS0");
      expect(cfg.get("vif") ?? []).toEqual(nics.map((n) => `mac=${n.mac},bridge=vse-${input.clusterKey}`));
      expect(out).toContain(`accel=${input.accel}`);
      break;
    }
    case "virtualbox": {
      const cmds = parseVboxPlan(out).map((c) => c.args);
      expect(cmds[0].slice(0, 3)).toEqual(["createvm", "--name", input.vm.name]);
      const modify = cmds.filter((c) => c[0] === "modifyvm").flatMap((c) => c.slice(2));
      const opt = (o: string) => modify[modify.indexOf(o) + 1];
      expect(opt("--memory")).toBe(String(p.memoryMiB));
      expect(opt("--cpus")).toBe(String(p.vcpus));
      expect(opt("--chipset")).toBe(p.machine === "q35" ? "ich9" : "piix3");
      expect(modify.filter((_, i) => /^--macaddress/.test(modify[i - 1] ?? ""))).toEqual(nics.map((n) => n.mac.replace(/:/g, "").toUpperCase()));
      expect(out).toContain(`accel=${input.accel}`);
      break;
    }
    case "palacios": {
      const vm = parseXml(out).vm as Xml;
      expect(vm["@class"]).toBe("PC");
      expect(text(vm.memory)).toBe(String(p.memoryMiB));
      expect(at(vm, "cores", "@count")).toBe(String(p.vcpus));
      expect(asList(at(vm, "cores", "core"))).toHaveLength(p.vcpus);
      expect(at(vm, "paging", "@mode")).toBe(input.accel === "kvm" ? "nested" : "shadow");
      const devices = asList(at(vm, "devices", "device"));
      expect(devices.filter((d) => d["@class"] === "LNX_VIRTIO_NIC").map((d) => text(d.mac))).toEqual(nics.map((n) => n.mac));
      break;
    }
  }
}

describe.each(ALL_HYPERVISORS)("golden renders: %s", (h) => {
  test.each(renderCases(h).map((c) => [c.name, c] as const))("%s matches tests/golden byte for byte and parses", (_, c) => {
    const out = renderVmConfig(c.input);
    const file = goldenFile(h, c.name);
    if (UPDATE) {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, out);
    }
    expect(fs.existsSync(file)).toBe(true);
    expect(out).toBe(fs.readFileSync(file, "utf8"));
    checkStructure(h, c.input, out);
  });

  test("rendering is pure: same input, byte-identical output, input untouched", () => {
    for (const c of renderCases(h)) {
      const before = JSON.stringify(c.input);
      const a = renderVmConfig(c.input);
      const b = renderVmConfig(JSON.parse(before));
      expect(b).toBe(a);
      expect(JSON.stringify(c.input)).toBe(before);
    }
  });

  test("every profile field reaches the render", () => {
    const base = renderCases(h)[0].input;
    const variants: Partial<RenderInput["vm"]["profile"]>[] = [{ memoryMiB: 512 }, { vcpus: 3 }, { machine: "q35" }, { machine: "microvm" }];
    for (const v of variants) {
      const changed = { ...base, vm: { ...base.vm, profile: { ...base.vm.profile, ...v } } };
      expect(renderVmConfig(changed)).not.toBe(renderVmConfig(base));
    }
    expect(renderVmConfig({ ...base, accel: "kvm" })).not.toBe(renderVmConfig(base));
  });

  test("the driver renders its own hypervisor only", () => {
    const c = renderCases(h)[0].input;
    expect(DRIVERS[h].render(c)).toBe(renderVmConfig(c));
    const other = ALL_HYPERVISORS.find((x) => x !== h)!;
    expect(() => DRIVERS[other].render(c)).toThrow(`the ${other} driver cannot render VM md-sim-0: its profile asks for ${h}`);
  });
});

test("the golden folders hold exactly the cases, so a stale golden file cannot linger", () => {
  for (const h of ALL_HYPERVISORS) {
    expect(fs.readdirSync(path.join(GOLDEN_DIR, h)).sort()).toEqual(
      renderCases(h)
        .map((c) => `${c.name}.golden`)
        .sort(),
    );
  }
});

test("cluster NICs: one per VM, locally administered, unique in the cluster", () => {
  const macs = Array.from({ length: 256 }, (_, i) => nicsFor(CASES_KEY, i)[0].mac);
  expect(new Set(macs).size).toBe(256);
  expect(macs.every(isLocalUnicastMac)).toBe(true);
});

describe("structural checks fail on broken output", () => {
  const render = (h: Hypervisor) => renderVmConfig(renderCases(h)[1].input);
  test("XML that is not well-formed", () => {
    expect(() => parseXml(render("libvirt").replace("</os>", ""))).toThrow(/not well-formed/);
    expect(() => parseXml(render("palacios").replace("<memory>", "<memory "))).toThrow(/not well-formed/);
    // What an unescaped value would do to the domain XML.
    expect(() => parseXml(render("libvirt").replace("&lt;a&amp;b&gt;", "<a&b>"))).toThrow(/not well-formed/);
  });
  test("xl.cfg: unquoted strings, broken lists, duplicate keys", () => {
    const xl = render("xen");
    expect(() => parseXlConfig(xl.replace('type = "hvm"', "type = hvm"))).toThrow(/line \d+: expected a quoted string or a number/);
    expect(() => parseXlConfig(xl.replace(/ \]$/m, ""))).toThrow(/expected ',' or '\]'/);
    expect(() => parseXlConfig(`${xl}memory = 1\n`)).toThrow(/memory is set twice/);
    expect(() => parseXlConfig('kernel = "/a" "/b"\n')).toThrow(/unexpected/);
  });
  test("VBoxManage plan: non-JSON lines, unknown subcommands and options, missing values", () => {
    const plan = render("virtualbox");
    expect(() => parseVboxPlan(plan.replace('["createvm"', '["createvm",'))).toThrow(/not JSON/);
    expect(() => parseVboxPlan(plan.replace('["storagectl"', '["storagecontrol"'))).toThrow(/unknown VBoxManage subcommand "storagecontrol"/);
    expect(() => parseVboxPlan(plan.replace('"--memory"', '"--mem"'))).toThrow(/has no option "--mem"/);
    expect(() => parseVboxPlan('["modifyvm","vm","--cpus"]\n')).toThrow(/--cpus needs 1 value/);
    expect(() => parseVboxPlan('["modifyvm","vm","--macaddress1","52:54:00:00:00:01"]\n')).toThrow(/12 hex digits/);
  });
});

describe("switching hypervisor is one field", () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

  function definitions(hypervisor: Hypervisor): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-switch-"));
    dirs.push(dir);
    fs.writeFileSync(
      path.join(dir, "defs.yaml"),
      [
        "apiVersion: vse.dev/v1",
        "kind: Environment",
        "metadata: { name: sum }",
        "spec:",
        '  job: { command: ["/bin/sh", "-c", "echo $((2+3))"] }',
        "---",
        "apiVersion: vse.dev/v1",
        "kind: VmProfile",
        "metadata: { name: small }",
        "spec:",
        `  hypervisor: ${hypervisor}`,
        "  memory: 512MiB",
        "  vcpus: 2",
        "  machine: pc",
        "  accel: tcg",
        "---",
        "apiVersion: vse.dev/v1",
        "kind: VirtualCluster",
        "metadata: { name: sw }",
        "spec: { environment: sum, profile: small, nodes: 3, allocation: { manager: local, hosts: 2 } }",
        "",
      ].join("\n"),
    );
    return dir;
  }

  test.each(ALL_HYPERVISORS.filter((h) => h !== "qemu"))("qemu -> %s changes the rendered configs and nothing else", async (h) => {
    const cache = fs.mkdtempSync(path.join(os.tmpdir(), "vse-switch-cache-"));
    dirs.push(cache);
    const [a] = await planClusters([definitions("qemu")], cache);
    const [b] = await planClusters([definitions(h)], cache);
    const strip = (p: typeof a) => ({
      ...p,
      model: {
        ...p.model,
        profile: { ...p.model.profile, hypervisor: "-" },
        vms: p.model.vms.map((v) => ({ ...v, profile: { ...v.profile, hypervisor: "-" } })),
      },
      vms: p.vms.map((v) => ({ ...v, config: "-", vm: { ...v.vm, profile: { ...v.vm.profile, hypervisor: "-" } } })),
    });
    expect(strip(b)).toEqual(strip(a));
    expect(b.vms).toHaveLength(3);
    b.vms.forEach((v, i) => {
      expect(v.vm.profile.hypervisor).toBe(h);
      expect(v.config).not.toBe(a.vms[i].config);
      expect(v.config).toBe(
        renderVmConfig({
          cluster: "sw",
          clusterKey: CLUSTER_KEY_SW,
          vm: v.vm,
          image: imageRef(parseQemuConfig(a.vms[i].config).facts.imageId),
          accel: "tcg",
          kernelArgs: [],
        }),
      );
    });
  });
});

/** planClusters' default project and stack. */
const CLUSTER_KEY_SW = clusterKey("vse", "local", "sw");
