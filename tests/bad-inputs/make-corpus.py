#!/usr/bin/env python3
# Writes the bad-definition corpus: one YAML file per case and expected.json
# (line, column, message substring). "@@" in a case marks where the loader must
# report the problem; it is removed from the file. Usage:
#   python3 tests/bad-inputs/make-corpus.py tests/bad-inputs
import json, os, sys
# Like every regenerate switch (tests/support/regenerate.js): CI only checks the corpus, never rewrites it.
if os.environ.get("CI", "").lower() not in ("", "0", "false"):
    sys.exit(f"make-corpus.py rewrites the checked-in corpus, and CI={os.environ['CI']} is set: refused; regenerate locally and commit it")
out = sys.argv[1]
cases = {}

def case(name, text, message):
    assert name not in cases, name
    assert text.count("@@") == 1, name
    i = text.index("@@")
    before = text[:i].split("\n")
    line, col = len(before), len(before[-1]) + 1
    cases[name] = {"text": text.replace("@@", ""), "line": line, "column": col, "message": message}

H = "apiVersion: vse.dev/v1\n"
def nm(name):
    # Problems with a field are reported at its key.
    return f"  @@name: {name[2:]}\n" if name.startswith("@@") else f"  name: {name}\n"
def env(name="sum", spec="  job:\n    command: [\"/bin/sh\", \"-c\", \"echo 5\"]\n", meta=""):
    return f"{H}kind: Environment\nmetadata:\n{nm(name)}{meta}spec:\n{spec}"
def prof(name="compute-small", spec="  accel: tcg\n", meta=""):
    return f"{H}kind: VmProfile\nmetadata:\n{nm(name)}{meta}spec:\n{spec}"
def clus(name="c1", spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n", meta=""):
    return f"{H}kind: VirtualCluster\nmetadata:\n{nm(name)}{meta}spec:\n{spec}"
def pol(spec, name="site"):
    return f"{H}kind: SitePolicy\nmetadata:\n  name: {name}\nspec:\n{spec}"
def docs(*ds):
    return "---\n".join(ds)
OK = [env(), prof(), clus()]
JOB = "  job:\n    command: [\"/bin/sh\", \"-c\", \"echo 5\"]\n"

# --- malformed YAML
case("yaml-unclosed-double-quote", 'apiVersion: vse.dev/v1\nkind: "Environment\nmetadata: {name: a}\n@@', "invalid YAML: Missing closing \"quote")
case("yaml-unclosed-single-quote", "apiVersion: vse.dev/v1\nkind: 'Environment\nmetadata: {name: a}\n@@", "invalid YAML: Missing closing 'quote")
case("yaml-tab-indentation", "apiVersion: vse.dev/v1\nkind: Environment\nmetadata:\n@@\tname: a\n", "Tabs are not allowed as indentation")
case("yaml-unclosed-flow-map", "apiVersion: vse.dev/v1\nkind: Environment\nmetadata: {name: a\n@@spec: {}\n", "end with a }")
case("yaml-unclosed-flow-seq", "apiVersion: vse.dev/v1\nkind: Environment\nspec:\n  job:\n    command: [a, b\n@@", "end with a ]")
case("yaml-duplicate-key", "apiVersion: vse.dev/v1\nkind: Environment\n@@kind: VmProfile\n", "Map keys must be unique")
case("yaml-duplicate-nested-key", env(spec=JOB + "  @@job: {}\n"), "Map keys must be unique")
case("yaml-compact-nested-map", "apiVersion: vse.dev/v1\nkind: @@Environment: x\n", "Nested mappings are not allowed in compact mappings")
case("yaml-bad-indent", "apiVersion: vse.dev/v1\nkind: Environment\nmetadata:\n  name: @@a\n   description: x\n", "invalid YAML: Implicit keys need to be on a single line")
case("yaml-undefined-alias", "apiVersion: vse.dev/v1\nkind: @@*k\n", "unknown alias *k: no anchor &k is defined before it")
case("yaml-deep-flow-nesting", "apiVersion: vse.dev/v1\nkind: Environment\nspec: " + "[" * 64 + "@@" + "[" * 200 + "]" * 264 + "\n", "more than 64 nested [ ] or { } collections")
case("yaml-deep-flow-map-nesting", "a: " + "{a: " * 64 + "@@" + "{a: " * 100 + "1" + "}" * 164 + "\n", "more than 64 nested [ ] or { } collections")
case("yaml-deep-compact-seq", "- " * 64 + "@@" + "- " * 100 + "1\n", "more than 64 nested sequences on one line")
case("yaml-deep-indent", "a:\n" + " " * 512 + "@@ b: 1\n", "indentation deeper than 512 columns")
case("yaml-alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\ni: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n".replace("a: &a", "@@a: &a", 1), "alias")
case("yaml-alias-bomb-in-spec", env(spec="  kernelArgs: &k [a, a, a, a, a, a, a, a, a, a]\n  job:\n    command: &c [*k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k, *k]\n").replace("apiVersion", "@@apiVersion", 1), "alias")
case("yaml-second-document-broken", docs(env(), "apiVersion: vse.dev/v1\nkind: VmProfile\nmetadata: [\n@@"), "end with a ]")
case("yaml-unclosed-block-quote-in-list", env(spec='  job:\n    command:\n      - "/bin/sh\n@@'), "Missing closing")
case("yaml-stray-flow-end", "apiVersion: vse.dev/v1\n@@]\n", "invalid YAML")
case("yaml-alias-as-flow-key", "apiVersion: vse.dev/v1\nkind: Environment\nmetadata: &x\n  name: a\nspec: {*x: @@1, *x: 2}\n", "Missing , or : between flow map items")

# --- not a definition
case("doc-scalar", "@@hello\n", "expected a mapping with apiVersion, kind, metadata and spec")
case("doc-number", "@@42\n", "expected a mapping with apiVersion, kind, metadata and spec")
case("doc-sequence", "@@- a\n- b\n", "expected a mapping with apiVersion, kind, metadata and spec")
case("doc-list-of-definitions", "@@- apiVersion: vse.dev/v1\n  kind: Environment\n", "expected a mapping")
case("doc-scalar-after-valid", docs(env(), "@@just text\n"), "expected a mapping")

# --- apiVersion
case("apiversion-missing", "@@kind: Environment\nmetadata: {name: a}\nspec: {}\n", 'expected "vse.dev/v1", found nothing')
case("apiversion-v2", "@@apiVersion: vse.dev/v2\nkind: Environment\n", 'expected "vse.dev/v1", found "vse.dev/v2"')
case("apiversion-number", "@@apiVersion: 1\nkind: Environment\n", 'expected "vse.dev/v1", found 1')
case("apiversion-k8s", "@@apiVersion: v1\nkind: Pod\n", 'expected "vse.dev/v1", found "v1"')
case("apiversion-null", "@@apiVersion:\nkind: Environment\n", 'found null')
case("apiversion-case", "@@apiVersion: VSE.dev/v1\nkind: Environment\n", 'found "VSE.dev/v1"')

# --- kinds
for n, k, found in [("kind-cluster", "Cluster", '"Cluster"'), ("kind-lowercase", "virtualcluster", '"virtualcluster"'), ("kind-number", "5", "5"),
                    ("kind-vm", "VirtualMachine", '"VirtualMachine"'), ("kind-policy-typo", "SitePolicies", '"SitePolicies"'), ("kind-profile-typo", "VMProfile", '"VMProfile"'),
                    ("kind-empty", '""', '""'), ("kind-list", "[Environment]", '["Environment"]')]:
    case(n, f"apiVersion: vse.dev/v1\n@@kind: {k}\nmetadata: {{name: a}}\nspec: {{}}\n", f"expected one of Environment, VmProfile, VirtualCluster, SitePolicy, found {found}")
case("kind-missing", "@@apiVersion: vse.dev/v1\nmetadata: {name: a}\n", "expected one of Environment, VmProfile, VirtualCluster, SitePolicy, found nothing")

# --- unknown fields
case("unknown-top-level", env() + "@@status: {}\n", 'unknown field "status"; expected one of: apiVersion, kind, metadata, spec')
case("unknown-metadata-labels", env(meta="  @@labels: {a: b}\n"), 'unknown field "labels"; expected one of: name, description')
case("unknown-env-spec", env(spec=JOB + "  @@packages: [gcc]\n"), 'unknown field "packages"; expected one of: base, debian, warm, warmAhead, kernelArgs, job')
case("semantic-warm-ahead-without-warm", env(spec="  @@warmAhead: true\n" + JOB), "warmAhead makes warm-launch snapshots ahead: it needs spec.warm: true")
case("unknown-env-debian", env(spec="  base: debian\n  debian: {packages: [bc], @@suite: bookworm}\n" + JOB), 'unknown field "suite"; expected one of: release, packages, mirror')
# A missing field is reported at its parent's key.
case("debian-missing", env(spec="  base: debian\n" + JOB).replace("\nspec:", "\n@@spec:"), 'required field "debian" is missing')
case("debian-without-base", env(spec="  @@debian: {packages: [bc]}\n" + JOB), 'not allowed here (only with base "debian")')
case("debian-package-name", env(spec="  base: debian\n  debian: {packages: [bc, @@\"bc;reboot\"]}\n" + JOB), 'expected a Debian package name')
case("debian-package-option", env(spec="  base: debian\n  debian: {packages: [@@--allow-unauthenticated]}\n" + JOB), 'expected a Debian package name')
case("debian-mirror-scheme", env(spec="  base: debian\n  debian: {packages: [bc], @@mirror: \"file:///etc\"}\n" + JOB), 'expected the Debian mirror')
case("unknown-env-job", env(spec=JOB + "    @@cwd: /tmp\n"), 'unknown field "cwd"; expected one of: command, env, afterJob, timeoutSeconds')
case("unknown-env-job-typo", env(spec=JOB + "    @@timeout: 5\n"), 'unknown field "timeout"')
case("unknown-profile-spec", prof(spec="  accel: tcg\n  @@cpus: 2\n"), 'unknown field "cpus"; expected one of: hypervisor, memory, vcpus, machine, accel')
case("unknown-profile-mem", prof(spec="  @@mem: 1GiB\n"), 'unknown field "mem"')
case("unknown-profile-disk", prof(spec="  @@disk: 10GiB\n"), 'unknown field "disk"')
case("unknown-cluster-spec", clus(spec="  environment: sum\n  profile: p\n  @@job: {command: [x]}\n"), 'unknown field "job"; expected one of: environment, profile, nodes, allocation')
case("unknown-cluster-replicas", clus(spec="  environment: sum\n  profile: p\n  @@replicas: 3\n"), 'unknown field "replicas"')
case("unknown-allocation", clus(spec="  environment: sum\n  profile: p\n  allocation:\n    @@queue: batch\n"), 'unknown field "queue"; expected one of: manager, hosts')
case("unknown-override", clus(spec="  environment: sum\n  profile: p\n  overrides:\n    - vm: 0\n      @@cpus: 2\n"), 'unknown field "cpus"; expected one of: vm, memory, vcpus')
case("unknown-policy-spec", pol("  @@maxMemory: 4GiB\n"), 'unknown field "maxMemory"; expected one of: defaults, limits, allowedHypervisors')
case("unknown-policy-limits", pol("  limits:\n    @@maxDisk: 1\n"), 'unknown field "maxDisk"; expected one of: maxMemory, maxVcpus, maxNodesPerCluster')
case("unknown-policy-defaults", pol("  defaults:\n    @@vm: {}\n"), 'unknown field "vm"; expected one of: profile, environment, cluster')
case("unknown-policy-defaults-profile", pol("  defaults:\n    profile:\n      @@cpus: 2\n"), 'unknown field "cpus"')
case("unknown-policy-defaults-env", pol("  defaults:\n    environment:\n      @@command: [x]\n"), 'unknown field "command"')
case("unknown-policy-defaults-cluster", pol("  defaults:\n    cluster:\n      @@manager: local\n"), 'unknown field "manager"; expected one of: nodes, hosts')
case("unknown-field-second-doc", docs(env(), prof(spec="  accel: tcg\n  @@gpu: true\n")), 'unknown field "gpu"')
case("unknown-metadata-namespace", clus(meta="  @@namespace: x\n"), 'unknown field "namespace"')

# --- missing required
case("missing-metadata", "@@apiVersion: vse.dev/v1\nkind: Environment\nspec:\n" + JOB, 'required field "metadata" is missing')
case("missing-spec", "@@apiVersion: vse.dev/v1\nkind: VmProfile\nmetadata: {name: a}\n", 'required field "spec" is missing')
case("missing-name", "apiVersion: vse.dev/v1\nkind: VmProfile\n@@metadata: {description: x}\nspec: {}\n", 'required field "name" is missing')
case("missing-job", env(spec="  @@base: busybox\n").replace("spec:\n  @@base", "@@spec:\n  base"), 'required field "job" is missing')
case("missing-command", env(spec="  @@job: {afterJob: stay-up}\n"), 'required field "command" is missing')
case("missing-environment-ref", clus(spec="  profile: p\n").replace("spec:", "@@spec:"), 'required field "environment" is missing')
case("missing-profile-ref", clus(spec="  environment: e\n").replace("spec:", "@@spec:"), 'required field "profile" is missing')
case("missing-override-vm", clus(spec="  environment: e\n  profile: p\n  overrides:\n    - @@vcpus: 2\n"), 'required field "vm" is missing')
case("missing-policy-spec", "@@apiVersion: vse.dev/v1\nkind: SitePolicy\nmetadata: {name: a}\n", 'required field "spec" is missing')

# --- wrong types
T = [
 ("type-nodes-string", clus(spec="  environment: e\n  profile: p\n  @@nodes: two\n"), 'expected integer, found "two"'),
 ("type-nodes-float", clus(spec="  environment: e\n  profile: p\n  @@nodes: 1.5\n"), "expected integer, found 1.5"),
 ("type-nodes-bool", clus(spec="  environment: e\n  profile: p\n  @@nodes: true\n"), "expected integer, found true"),
 ("type-nodes-list", clus(spec="  environment: e\n  profile: p\n  @@nodes: [1]\n"), "expected integer, found [1]"),
 ("type-vcpus-string", prof(spec="  @@vcpus: \"2\"\n"), 'expected integer, found "2"'),
 ("type-vcpus-null", prof(spec="  @@vcpus:\n"), "expected integer, found null"),
 ("type-command-string", env(spec="  job:\n    @@command: echo hi\n"), 'expected array, found "echo hi"'),
 ("type-command-item-number", env(spec="  job:\n    command: [echo, @@5]\n"), "expected string, found 5"),
 ("type-command-map", env(spec="  job:\n    @@command: {a: b}\n"), "expected array"),
 ("type-env-number", env(spec=JOB + "    env:\n      @@N: 5\n"), "expected string, found 5"),
 ("type-env-list", env(spec=JOB + "    @@env: [A=1]\n"), "expected object"),
 ("type-kernelargs-string", env(spec="  @@kernelArgs: quiet\n" + JOB), 'expected array, found "quiet"'),
 ("type-timeout-string", env(spec=JOB + "    @@timeoutSeconds: 5m\n"), 'expected integer, found "5m"'),
 ("type-name-number", env(name="@@5"), "expected string, found 5"),
 ("type-name-list", env(name="@@[a]"), 'expected string, found ["a"]'),
 ("type-metadata-string", "apiVersion: vse.dev/v1\nkind: Environment\n@@metadata: sum\nspec: {}\n", 'expected object, found "sum"'),
 ("type-spec-list", "apiVersion: vse.dev/v1\nkind: VmProfile\nmetadata: {name: a}\n@@spec: [a]\n", "expected object"),
 ("type-spec-null", "apiVersion: vse.dev/v1\nkind: VmProfile\nmetadata: {name: a}\n@@spec:\n", "expected object, found null"),
 ("type-description-number", env(meta="  @@description: 5\n"), "expected string, found 5"),
 ("type-profile-ref-number", clus(spec="  environment: e\n  @@profile: 5\n"), "expected string, found 5"),
 ("type-allocation-string", clus(spec="  environment: e\n  profile: p\n  @@allocation: local\n"), 'expected object, found "local"'),
 ("type-hosts-string", clus(spec="  environment: e\n  profile: p\n  allocation: {@@hosts: two}\n"), 'expected a whole number or a list, found "two"'),
 ("type-overrides-map", clus(spec="  environment: e\n  profile: p\n  @@overrides: {vm: 0}\n"), "expected array"),
 ("type-override-vm-string", clus(spec="  environment: e\n  profile: p\n  overrides:\n    - @@vm: first\n"), 'expected integer, found "first"'),
 ("type-override-item-string", clus(spec="  environment: e\n  profile: p\n  overrides:\n    - @@vm0\n"), 'expected object, found "vm0"'),
 ("type-memory-bool", prof(spec="  @@memory: true\n"), "expected a memory size such as 256 (MiB)"),
 ("type-memory-list", prof(spec="  @@memory: [1]\n"), "expected a memory size"),
 ("type-policy-limit-string", pol("  limits:\n    @@maxVcpus: eight\n"), 'expected integer, found "eight"'),
 ("type-policy-hypervisors-string", pol("  @@allowedHypervisors: qemu\n"), 'expected array, found "qemu"'),
 ("type-policy-forbidden-number", pol("  forbiddenKernelArgs: [@@1]\n"), "expected string, found 1"),
 ("type-policy-defaults-list", pol("  @@defaults: []\n"), "expected object"),
 ("type-afterjob-bool", env(spec=JOB + "    @@afterJob: false\n"), "expected string, found false"),
]
for n, t, m in T: case(n, t, m)

# --- bounds and formats
B = [
 ("bounds-nodes-zero", clus(spec="  environment: e\n  profile: p\n  @@nodes: 0\n"), "expected a number >= 1, found 0"),
 ("bounds-nodes-negative", clus(spec="  environment: e\n  profile: p\n  @@nodes: -3\n"), "expected a number >= 1, found -3"),
 ("bounds-nodes-257", clus(spec="  environment: e\n  profile: p\n  @@nodes: 257\n"), "expected a number <= 256, found 257"),
 ("bounds-vcpus-zero", prof(spec="  @@vcpus: 0\n"), "expected a number >= 1, found 0"),
 ("bounds-vcpus-65", prof(spec="  @@vcpus: 65\n"), "expected a number <= 64, found 65"),
 ("bounds-timeout-zero", env(spec=JOB + "    @@timeoutSeconds: 0\n"), "expected a number >= 1, found 0"),
 ("bounds-timeout-day", env(spec=JOB + "    @@timeoutSeconds: 86401\n"), "expected a number <= 86400, found 86401"),
 ("bounds-hosts-zero", clus(spec="  environment: e\n  profile: p\n  allocation: {@@hosts: 0}\n"), "expected a number >= 1, found 0"),
 ("bounds-hosts-65", clus(spec="  environment: e\n  profile: p\n  allocation: {@@hosts: 65}\n"), "expected a number <= 64, found 65"),
 ("bounds-override-vm-negative", clus(spec="  environment: e\n  profile: p\n  overrides:\n    - @@vm: -1\n"), "expected a number >= 0, found -1"),
 ("bounds-override-vm-256", clus(spec="  environment: e\n  profile: p\n  overrides:\n    - @@vm: 256\n"), "expected a number <= 255, found 256"),
 ("bounds-override-vcpus", clus(spec="  environment: e\n  profile: p\n  overrides:\n    - {vm: 0, @@vcpus: 100}\n"), "expected a number <= 64, found 100"),
 ("bounds-command-empty", env(spec="  job:\n    @@command: []\n"), "expected at least 1 items"),
 ("bounds-command-too-long", env(spec="  job:\n    @@command: [" + ", ".join(["x"] * 257) + "]\n"), "expected at most 256 items"),
 ("bounds-kernelargs-too-many", env(spec="  @@kernelArgs: [" + ", ".join(["a"] * 33) + "]\n" + JOB), "expected at most 32 items"),
 ("bounds-description-too-long", env(meta="  @@description: " + "x" * 1001 + "\n"), "expected at most 1000 characters"),
 ("bounds-command-arg-too-long", env(spec="  job:\n    command: [@@" + "x" * 4097 + "]\n"), "expected at most 4096 characters"),
 ("bounds-policy-maxvcpus", pol("  limits: {@@maxVcpus: 0}\n"), "expected a number >= 1, found 0"),
 ("bounds-policy-maxnodes", pol("  limits: {@@maxNodesPerCluster: 1000}\n"), "expected a number <= 256, found 1000"),
 ("bounds-policy-hypervisors-empty", pol("  @@allowedHypervisors: []\n"), "expected at least 1 items"),
 ("bounds-policy-timeout", pol("  defaults:\n    environment: {@@timeoutSeconds: 0}\n"), "expected a number >= 1, found 0"),
 ("format-name-uppercase", env(name="@@Sum"), 'found "Sum"'),
 ("format-name-underscore", prof(name="@@compute_small"), 'expected a lowercase DNS label (letters, digits and \'-\', starting with a letter, at most 40 characters), found "compute_small"'),
 ("format-name-leading-digit", clus(name="@@1cluster"), "expected a lowercase DNS label"),
 ("format-name-trailing-dash", clus(name="@@c1-"), "expected a lowercase DNS label"),
 ("format-name-too-long", env(name="@@" + "a" * 41), "expected a lowercase DNS label"),
 ("format-name-empty", env(name='@@""'), "expected a lowercase DNS label"),
 ("format-name-space", env(name='@@"my env"'), "expected a lowercase DNS label"),
 ("format-name-dots", env(name="@@a.b"), "expected a lowercase DNS label"),
 ("format-profile-ref", clus(spec="  environment: e\n  @@profile: Compute\n"), "expected a lowercase DNS label"),
 ("format-kernelarg-space", env(spec="  kernelArgs: [@@\"a b\"]\n" + JOB), "expected a kernel parameter (1 to 128 letters, digits or _.,:/=+- characters), found \"a b\""),
 ("format-kernelarg-semicolon", env(spec="  kernelArgs: [@@\"a;reboot\"]\n" + JOB), "found \"a;reboot\""),
 ("format-env-name", env(spec=JOB + "    env:\n      @@1BAD: x\n"), 'invalid name "1BAD"; expected an environment variable name'),
 ("format-env-name-dash", env(spec=JOB + "    env:\n      @@MY-VAR: x\n"), 'invalid name "MY-VAR"; expected an environment variable name'),
 ("format-policy-hypervisor-name", pol("  allowedHypervisors: [@@\"Q EMU\"]\n"), 'found "Q EMU"'),
 ("format-policy-duplicate-hypervisor", pol("  @@allowedHypervisors: [qemu, qemu]\n"), "duplicate"),
]
for n, t, m in B: case(n, t, m)

# --- quantities beyond any machine: refused when the definitions are loaded, in every kind that carries
# them, whether or not a VM uses the definition (schema maxima, and memory ranges the schema cannot express)
MEM = "expected between 16 MiB and 1048576 MiB, found"
Q = [
 ("bounds-memory-unused-profile", docs(env(), prof(), prof(name="huge", spec="  accel: tcg\n  @@memory: 2TiB\n"), clus()), MEM + " 2097152 MiB"),
 ("bounds-memory-profile-alone", prof(spec="  @@memory: 10TiB\n"), MEM + " 10485760 MiB"),
 ("bounds-memory-profile-int", prof(spec="  @@memory: 2097152\n"), MEM + " 2097152 MiB"),
 ("bounds-memory-profile-huge-int", prof(spec="  @@memory: 99999999999999999999999\n"), MEM + " 1e+23 MiB"),
 ("bounds-memory-profile-overflow", prof(spec="  @@memory: \"" + "9" * 400 + "G\"\n"), "expected a memory size a machine can have"),
 ("bounds-memory-override-unresolved", clus(spec="  environment: e\n  profile: p\n  overrides:\n    - {vm: 0, @@memory: 2TiB}\n"), MEM + " 2097152 MiB"),
 ("bounds-memory-override-small", clus(spec="  environment: e\n  profile: p\n  overrides:\n    - {vm: 0, @@memory: 8}\n"), "expected between 16 MiB and 1048576 MiB, found 8 MiB"),
 ("bounds-policy-maxmemory-huge", pol("  limits: {@@maxMemory: 10TiB}\n"), MEM + " 10485760 MiB"),
 ("bounds-policy-maxmemory-small", pol("  limits: {@@maxMemory: 8MiB}\n"), MEM + " 8 MiB"),
 ("bounds-policy-default-memory-huge", pol("  defaults:\n    profile: {@@memory: 10TiB}\n"), MEM + " 10485760 MiB"),
 # The default is never used (the profile sets its memory), and still refused.
 ("bounds-policy-default-memory-unused", docs(env(), prof(spec="  accel: tcg\n  memory: 512MiB\n"), clus(), pol("  defaults:\n    profile: {@@memory: 2TiB}\n")), MEM + " 2097152 MiB"),
 ("bounds-policy-maxmemory-per-agent-huge", pol("  limits: {@@maxMemoryPerAgent: 100TiB}\n"), "expected between 16 MiB and 67108864 MiB, found 104857600 MiB"),
 ("bounds-policy-maxmemory-per-agent-small", pol("  limits: {@@maxMemoryPerAgent: 8MiB}\n"), "expected between 16 MiB and 67108864 MiB, found 8 MiB"),
 ("units-policy-maxmemory-per-agent", pol("  limits: {@@maxMemoryPerAgent: 4XB}\n"), 'expected a memory size such as 256 (MiB), "256MiB" or "2GiB", found "4XB"'),
 ("bounds-policy-maxvms-per-agent-zero", pol("  limits: {@@maxVmsPerAgent: 0}\n"), "expected a number >= 1, found 0"),
 ("bounds-policy-maxvms-per-agent-4097", pol("  limits: {@@maxVmsPerAgent: 4097}\n"), "expected a number <= 4096, found 4097"),
 ("type-policy-maxvms-per-agent-string", pol("  limits: {@@maxVmsPerAgent: many}\n"), 'expected integer, found "many"'),
 ("bounds-policy-maxvcpus-65", pol("  limits: {@@maxVcpus: 65}\n"), "expected a number <= 64, found 65"),
 ("bounds-policy-default-vcpus-65", pol("  defaults:\n    profile: {@@vcpus: 65}\n"), "expected a number <= 64, found 65"),
 ("bounds-policy-default-timeout-day", pol("  defaults:\n    environment: {@@timeoutSeconds: 86401}\n"), "expected a number <= 86400, found 86401"),
 ("bounds-policy-default-nodes-257", pol("  defaults:\n    cluster: {@@nodes: 257}\n"), "expected a number <= 256, found 257"),
 ("bounds-policy-default-hosts-65", pol("  defaults:\n    cluster: {@@hosts: 65}\n"), "expected a number <= 64, found 65"),
 ("bounds-override-host-64", clus(spec="  environment: e\n  profile: p\n  overrides:\n    - {vm: 0, @@host: 64}\n"), "expected a number <= 63, found 64"),
 ("bounds-vcpus-huge", prof(spec="  @@vcpus: 100000000000000000000\n"), "expected a number <= 64, found 100000000000000000000"),
 ("bounds-vcpus-unused-profile", docs(env(), prof(), prof(name="wide", spec="  accel: tcg\n  @@vcpus: 1024\n"), clus()), "expected a number <= 64, found 1024"),
 ("bounds-timeout-infinite", env(spec=JOB + "    @@timeoutSeconds: .inf\n"), "expected a number <= 86400, found Infinity"),
 ("bounds-memory-infinite", prof(spec="  @@memory: .inf\n"), "expected a memory size a machine can have, found Infinity"),
 ("bounds-policy-maxmemory-infinite", pol("  limits: {@@maxMemory: .inf}\n"), "expected a memory size a machine can have, found Infinity"),
 ("bounds-nodes-huge", clus(spec="  environment: e\n  profile: p\n  @@nodes: 1000000\n"), "expected a number <= 256, found 1000000"),
]
for n, t, m in Q: case(n, t, m)

# --- enums
E = [
 ("enum-hypervisor", prof(spec="  @@hypervisor: kvm\n"), 'expected one of "qemu"'),
 ("enum-hypervisor-case", prof(spec="  @@hypervisor: QEMU\n"), 'found "QEMU"'),
 ("enum-machine", prof(spec="  @@machine: virt\n"), 'expected one of "microvm", "q35", "pc", found "virt"'),
 ("enum-accel", prof(spec="  @@accel: hvf\n"), 'expected one of "auto", "tcg", "kvm", found "hvf"'),
 ("enum-base", env(spec="  @@base: ubuntu\n" + JOB), 'expected one of "busybox", "debian", found "ubuntu"'),
 ("enum-debian-release", env(spec="  base: debian\n  debian: {@@release: sid}\n" + JOB), 'expected one of "bookworm", "trixie", found "sid"'),
 ("enum-afterjob", env(spec=JOB + "    @@afterJob: reboot\n"), 'expected one of "stay-up", "power-off", found "reboot"'),
 ("enum-manager", clus(spec="  environment: e\n  profile: p\n  allocation: {@@manager: kubernetes}\n"), 'found "kubernetes"'),
 ("enum-policy-default-accel", pol("  defaults:\n    profile: {@@accel: hvf}\n"), 'found "hvf"'),
 ("enum-policy-default-machine", pol("  defaults:\n    profile: {@@machine: virt}\n"), 'found "virt"'),
 ("enum-policy-default-afterjob", pol("  defaults:\n    environment: {@@afterJob: halt}\n"), 'found "halt"'),
 ("enum-policy-default-hypervisor", pol("  defaults:\n    profile: {@@hypervisor: hyperv}\n"), 'found "hyperv"'),
]
for n, t, m in E: case(n, t, m)

# --- units
U = [("4XB", "expected a memory size"), ("12Q", "expected a memory size"), ("GiB", "expected a memory size"), ("1.5.5G", "expected a memory size"),
     ("-1G", "expected a memory size"), ("1e3M", "expected a memory size"), ("256 MB extra", "expected a memory size"), ("0x100", "expected a memory size"),
     ("", "expected a memory size")]
for i, (v, m) in enumerate(U):
    case(f"units-bad-{i:02d}", prof(spec=f"  @@memory: \"{v}\"\n"), m + f' such as 256 (MiB), "256MiB" or "2GiB", found "{v}"')
RU = [("0.1K", "expected a whole number of MiB"), ("8MiB", "expected between 16 MiB and 1048576 MiB, found 8 MiB"), ("2048GiB", "expected between 16 MiB and 1048576 MiB, found 2097152 MiB"),
      ("2TiB", "found 2097152 MiB"), ("1.3M", "expected a whole number of MiB"), ("100KiB", "expected a whole number of MiB"), ("15", "found 15 MiB"), ("0G", "found 0 MiB"), ("5iB", "expected a memory size such as")]
for i, (v, m) in enumerate(RU):
    case(f"units-range-{i:02d}", docs(env(), prof(spec=f"  accel: tcg\n  @@memory: \"{v}\"\n"), clus()), m)
case("units-int-zero", prof(spec="  @@memory: 0\n"), "expected a memory size")
case("units-int-float", prof(spec="  @@memory: 1.5\n"), "expected a memory size")
case("units-int-small", docs(env(), prof(spec="  accel: tcg\n  @@memory: 8\n"), clus()), "found 8 MiB")
case("units-override", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n  overrides:\n    - {vm: 1, @@memory: 4XB}\n")), 'found "4XB"')
case("units-override-range", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n  overrides:\n    - {vm: 1, @@memory: 2048GiB}\n")), "found 2097152 MiB")
case("units-policy-max", pol("  limits: {@@maxMemory: 4XB}\n"), 'found "4XB"')
case("units-policy-default", docs(env(), prof(), clus(), pol("  defaults:\n    profile: {@@memory: 0.5K}\n")), "expected a whole number of MiB")

# --- references
R = [
 ("ref-profile-typo", docs(env(), prof(), clus(spec="  environment: sum\n  @@profile: compute-smal\n")), 'unknown VmProfile "compute-smal"; did you mean "compute-small"?'),
 ("ref-profile-transposed", docs(env(), prof(), clus(spec="  environment: sum\n  @@profile: compute-smlal\n")), 'did you mean "compute-small"?'),
 ("ref-profile-prefix", docs(env(), prof(), clus(spec="  environment: sum\n  @@profile: computer-small\n")), 'did you mean "compute-small"?'),
 ("ref-environment-typo", docs(env(), prof(), clus(spec="  @@environment: summ\n  profile: compute-small\n")), 'unknown Environment "summ"; did you mean "sum"?'),
 ("ref-environment-far", docs(env(), prof(), clus(spec="  @@environment: debian-hpc\n  profile: compute-small\n")), 'unknown Environment "debian-hpc"; known: sum'),
 ("ref-profile-none-defined", docs(env(), clus(spec="  environment: sum\n  @@profile: compute-small\n")), 'unknown VmProfile "compute-small"; no VmProfile is defined'),
 ("ref-environment-none-defined", docs(prof(), clus(spec="  @@environment: sum\n  profile: compute-small\n")), 'unknown Environment "sum"; no Environment is defined'),
 ("ref-profile-pick-closest", docs(env(), prof(), prof(name="compute-large"), clus(spec="  environment: sum\n  @@profile: compute-larg\n")), 'did you mean "compute-large"?'),
 ("ref-profile-is-environment", docs(env(), prof(), clus(spec="  environment: sum\n  @@profile: sum\n")), 'unknown VmProfile "sum"'),
 ("ref-environment-is-profile", docs(env(), prof(), clus(spec="  @@environment: compute-small\n  profile: compute-small\n")), 'unknown Environment "compute-small"'),
 ("ref-both-unknown", docs(clus(spec="  @@environment: e\n  profile: p\n")), 'unknown Environment "e"'),
 ("ref-hosts-above-nodes", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n  allocation: {@@hosts: 3}\n")), "expected at most 2 hosts"),
 ("ref-static-hosts-number", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n  allocation: {manager: static, @@hosts: 2}\n")), "manager static: expected a list of hosts ({ address: <IPv4> } each), found the number 2"),
 ("ref-local-hosts-list", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n  allocation:\n    manager: local\n    @@hosts: [{address: 10.0.0.2}]\n")), "manager local: expected a number of hosts, found a list of addresses"),
 ("ref-static-address-twice", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n  allocation:\n    manager: static\n    hosts:\n      - {address: 10.0.0.2}\n      - {@@address: 10.0.0.2}\n")), "address 10.0.0.2 is declared twice (hosts[0] too)"),
 ("ref-static-address-loopback", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n  allocation:\n    manager: static\n    hosts:\n      - {@@address: 127.0.0.1}\n")), "expected a host's unicast address, found 127.0.0.1"),
 ("format-host-address", clus(spec="  environment: e\n  profile: p\n  allocation:\n    manager: static\n    hosts:\n      - {@@address: 10.0.0.256}\n"), 'found "10.0.0.256"'),
 ("format-host-netns", clus(spec="  environment: e\n  profile: p\n  allocation:\n    manager: static\n    hosts:\n      - {address: 10.0.0.2, @@netns: \"../etc\"}\n"), 'found "../etc"'),
 ("unknown-host-field", clus(spec="  environment: e\n  profile: p\n  allocation:\n    manager: static\n    hosts:\n      - {address: 10.0.0.2, @@user: root}\n"), 'unknown field "user"; expected one of: address, netns'),
 ("bounds-port-low", clus(spec="  environment: e\n  profile: p\n  allocation: {manager: static, @@port: 80}\n"), "expected a number >= 1024, found 80"),
 ("ref-override-vm-out-of-range", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n  overrides:\n    - @@vm: 2\n")), "expected a VM index below 2 (nodes), found 2"),
 ("ref-override-twice", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n  overrides:\n    - {vm: 1, vcpus: 2}\n    - {@@vm: 1, vcpus: 3}\n")), "VM 1 is overridden twice"),
]
for n, t, m in R: case(n, t, m)

# --- duplicates
D = [
 ("dup-environment", docs(env(), env().replace("name: sum", "@@name: sum")), 'duplicate Environment name "sum" (first defined at'),
 ("dup-profile", docs(prof(), prof().replace("name: compute-small", "@@name: compute-small")), 'duplicate VmProfile name "compute-small"'),
 ("dup-cluster", docs(env(), prof(), clus(), clus().replace("name: c1", "@@name: c1")), 'duplicate VirtualCluster name "c1"'),
 ("dup-policy", docs(pol("  {}\n"), pol("  {}\n").replace("name: site", "@@name: site")), 'duplicate SitePolicy name "site"'),
 ("dup-two-policies", docs(pol("  {}\n"), pol("  {}\n", name="other").replace("  name: other", "  @@name: other")), 'only one SitePolicy may apply; "site" is already defined at'),
 ("dup-policy-three", docs(env(), prof(), clus(), pol("  {}\n", name="a"), pol("  {}\n", name="b").replace("  name: b", "  @@name: b")), "only one SitePolicy may apply"),
]
for n, t, m in D: case(n, t, m)

# --- policy violations
P = [
 ("policy-max-memory", docs(env(), prof(spec="  accel: tcg\n  @@memory: 8GiB\n"), clus(), pol("  limits: {maxMemory: 4GiB}\n")), 'rule spec.limits.maxMemory at'),
 ("policy-max-memory-default", docs(env(), prof().replace("spec:", "@@spec:"), clus(), pol("  limits: {maxMemory: 128MiB}\n")), "has 256 MiB of memory"),
 ("policy-max-memory-override", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n  overrides:\n    - {vm: 1, @@memory: 1GiB}\n"), pol("  limits: {maxMemory: 512MiB}\n")), 'VM "c1-1" has 1024 MiB of memory'),
 ("policy-max-vcpus", docs(env(), prof(spec="  accel: tcg\n  @@vcpus: 32\n"), clus(), pol("  limits: {maxVcpus: 8}\n")), "allows at most 8 vCPUs per VM"),
 ("policy-max-vcpus-override", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  nodes: 2\n  overrides:\n    - {vm: 0, @@vcpus: 9}\n"), pol("  limits: {maxVcpus: 8}\n")), 'VM "c1-0" has 9 vCPUs'),
 ("policy-max-nodes", docs(env(), prof(), clus(spec="  environment: sum\n  profile: compute-small\n  @@nodes: 10\n"), pol("  limits: {maxNodesPerCluster: 4}\n")), "allows at most 4 nodes per cluster"),
 ("policy-kernel-release", docs(env().replace("spec:", "@@spec:"), prof(), clus(), pol("  allowedKernels: [\"5.10.*\"]\n")), 'boots kernel 6.1.0-56-amd64; site policy "site" rule spec.allowedKernels'),
 ("policy-hypervisor", docs(env(), prof(spec="  accel: tcg\n  @@hypervisor: qemu\n"), clus(), pol("  allowedHypervisors: [xen, libvirt]\n")), 'allows only "xen", "libvirt"'),
 ("policy-hypervisor-default", docs(env(), prof().replace("spec:", "@@spec:"), clus(), pol("  allowedHypervisors: [xen]\n")), 'hypervisor "qemu"'),
 ("policy-base", docs(env(spec="  @@base: busybox\n" + JOB), prof(), clus(), pol("  allowedBases: [\"debian:*\", \"rocky:*\"]\n")), 'allows only bases matching "debian:*", "rocky:*"'),
 ("policy-kernel-arg", docs(env(spec="  kernelArgs: [quiet, @@init=/bin/sh]\n" + JOB), prof(), clus(), pol("  forbiddenKernelArgs: [\"init=*\"]\n")), 'kernel parameter "init=/bin/sh"'),
 ("policy-kernel-arg-exact", docs(env(spec="  kernelArgs: [@@nokaslr]\n" + JOB), prof(), clus(), pol("  forbiddenKernelArgs: [nokaslr]\n")), 'forbids "nokaslr"'),
 ("policy-kernel-arg-from-default", docs(env().replace("spec:", "@@spec:"), prof(), clus(), pol("  defaults:\n    environment: {kernelArgs: [mitigations=off]}\n  forbiddenKernelArgs: [\"mitigations=*\"]\n")), "set by policy default spec.defaults.environment.kernelArgs"),
 ("policy-kernel-arg-question", docs(env(spec="  kernelArgs: [@@nosmp1]\n" + JOB), prof(), clus(), pol("  forbiddenKernelArgs: [\"nosmp?\"]\n")), 'forbids "nosmp?"'),
 ("policy-default-above-limit", pol("  defaults:\n    profile: {@@memory: 8GiB}\n  limits: {maxMemory: 4GiB}\n"), "default of 8192 MiB exceeds this policy's limits.maxMemory of 4096 MiB"),
 ("policy-default-vcpus-above-limit", pol("  defaults:\n    profile: {@@vcpus: 16}\n  limits: {maxVcpus: 4}\n"), "exceeds this policy's limits.maxVcpus of 4"),
 ("policy-default-nodes-above-limit", pol("  defaults:\n    cluster: {@@nodes: 16}\n  limits: {maxNodesPerCluster: 4}\n"), "exceeds this policy's limits.maxNodesPerCluster of 4"),
 ("policy-default-hypervisor-not-allowed", pol("  defaults:\n    profile: {@@hypervisor: qemu}\n  allowedHypervisors: [xen]\n"), "is not in this policy's allowedHypervisors"),
 ("policy-second-cluster", docs(env(), prof(), clus(), clus(name="c2", spec="  environment: sum\n  profile: compute-small\n  @@nodes: 3\n"), pol("  limits: {maxNodesPerCluster: 2}\n")), "3 nodes"),
 ("policy-large-profile-only-used", docs(env(), prof(), prof(name="big", spec="  accel: tcg\n  @@memory: 64GiB\n"), clus(), clus(name="c2", spec="  environment: sum\n  profile: big\n"), pol("  limits: {maxMemory: 32GiB}\n")), "allows at most 32768 MiB per VM"),
]
for n, t, m in P: case(n, t, m)

os.makedirs(out, exist_ok=True)
index = {}
for n, c in sorted(cases.items()):
    with open(os.path.join(out, n + ".yaml"), "w") as f:
        f.write(c["text"])
    index[n + ".yaml"] = {"line": c["line"], "column": c["column"], "message": c["message"]}
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(index, f, indent=2)
    f.write("\n")
print(len(cases), "cases")
